"""The on-call console, as a person uses it: a real collector, a real loop incident from the OTel
SDK, and the pages in a real headless Chromium (Debian's ``chromium`` and ``chromium-driver``,
driven by Selenium), plus the attacks a browser makes possible (login, CSRF, redirects, XSS).
"""

from __future__ import annotations

import re
import shutil
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from agentwatch.console import data
from tests.conftest import run_collector
from tests.console.agent import QUESTION, run_support_agent
from tests.test_detect_e2e import wait_for_incidents

TOKEN = "console-s3cret"
#: tenants' reader tokens see their own incidents (the admin's exporter writes tenant "default")
TENANTS = {
    "acme": {"ingest_token": "acme-in", "read_token": "acme-read"},
    "beta": {"ingest_token": "beta-in", "read_token": "beta-read"},
}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    """A collector with an API token and one open loop incident: session loop-1 of user u-1
    looks up four orders, then order 42 (not found) eight times; the loop detector flags one of
    those calls as where it went off the rails (the first incident it opens is the one used)."""
    with run_collector(
        tmp_path_factory.mktemp("console"), api_token=TOKEN, tenants=TENANTS
    ) as collector:
        span_ids = run_support_agent(
            collector, "loop-1", "u-1", [1, 2, 3, 4] + [42] * 8, token=TOKEN
        )
        incidents = wait_for_incidents(collector, "detector = 'loop'")
        incident = min(incidents, key=lambda i: (i["first_seen"], i["incident_id"]))
        yield collector, incident, span_ids


def logged_in(collector) -> requests.Session:
    web = requests.Session()
    answer = web.post(
        f"{collector.api_url}/login", data={"token": TOKEN, "actor": "alice", "next": "/"}
    )
    assert answer.status_code == 200 and answer.url.endswith("/")
    return web


def csrf_of(html: str) -> str:
    return html.split('name="csrf" value="', 1)[1].split('"', 1)[0]


# --- over plain HTTP: who may see and do what ------------------------------------------------


def test_the_console_asks_for_the_token_and_keeps_it_out_of_reach_of_scripts(loop):
    collector, incident, _ = loop
    page = f"/incidents/{incident['incident_id']}"
    first = requests.get(collector.api_url + page, allow_redirects=False)
    assert first.status_code == 303
    location = urlsplit(first.headers["Location"])
    assert (location.path, parse_qs(location.query)["next"]) == ("/login", [page])

    wrong = requests.post(f"{collector.api_url}/login", data={"token": "guess", "next": page})
    assert wrong.status_code == 401 and "does not open the console" in wrong.text

    right = requests.post(
        f"{collector.api_url}/login", data={"token": TOKEN, "next": page}, allow_redirects=False
    )
    assert right.status_code == 303 and right.headers["Location"] == page
    cookie = right.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie


@pytest.mark.parametrize(
    "target", ["//evil.example/", "https://evil.example/", "/\\evil.example", "javascript:x"]
)
def test_after_login_the_console_never_sends_you_to_another_site(loop, target):
    collector, _, _ = loop
    answer = requests.post(
        f"{collector.api_url}/login", data={"token": TOKEN, "next": target}, allow_redirects=False
    )
    assert answer.headers["Location"] == "/"


def test_a_form_posted_from_another_site_changes_nothing(loop):
    collector, incident, _ = loop
    web = logged_in(collector)
    url = f"{collector.api_url}/incidents/{incident['incident_id']}/contain"
    form = {"action": "kill_agent", "reason": "csrf"}
    assert web.post(url, data=form).status_code == 403  # no form token
    html = web.get(f"{collector.api_url}/incidents/{incident['incident_id']}").text
    evil = {"Origin": "https://evil.example"}
    assert web.post(url, data={**form, "csrf": csrf_of(html)}, headers=evil).status_code == 403
    assert requests.post(url, data={**form, "csrf": csrf_of(html)}).status_code == 403  # no cookie
    controls = requests.get(
        f"{collector.api_url}/v1/control", headers={"Authorization": f"Bearer {TOKEN}"}
    ).json()["controls"]
    assert not [c for c in controls if c["mode"] == "killed"]


def test_what_a_person_types_comes_back_escaped(loop):
    collector, _, _ = loop
    web = logged_in(collector)
    page = web.get(f"{collector.api_url}/", params={"agent": '"><script>alert(1)</script>'})
    assert page.status_code == 200
    assert "<script>alert(1)" not in page.text and "&lt;script&gt;alert(1)" in page.text
    assert "script-src" not in page.headers["Content-Security-Policy"]  # default-src 'self'
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]


def test_the_blast_radius_downloads_as_csv(loop):
    collector, incident, _ = loop
    web = logged_in(collector)
    answer = web.get(f"{collector.api_url}/incidents/{incident['incident_id']}/affected.csv")
    assert answer.headers["Content-Type"].startswith("text/csv")
    header, *rows = [line.split(",") for line in answer.text.strip().splitlines()]
    assert header[:4] == ["incident_id", "session_id", "trace_id", "user_id"]
    assert [(r[1], r[3]) for r in rows] == [("loop-1", "u-1")]


def test_a_long_run_shows_the_steps_around_the_off_rails_step(loop, monkeypatch):
    collector, incident, span_ids = loop
    monkeypatch.setattr(data, "BEFORE_STEPS", 4)  # as if the run were longer than the window
    monkeypatch.setattr(data, "AFTER_STEPS", 2)
    html = logged_in(collector).get(f"{collector.api_url}/incidents/{incident['incident_id']}")
    shown = re.findall(r'data-span="([0-9a-f]{16})"', html.text)
    assert len(shown) == 6 and shown[3] == incident["span_id"]  # 3 before it, 2 after
    # numbered in the whole run: the invoke_agent span, then an LLM turn before each tool call
    number = 3 + 2 * span_ids["tool"].index(incident["span_id"])
    assert f"steps {number - 3}–{number + 2} of 25, around the off-rails step" in html.text


# --- in a real browser ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip(
            "Chromium is not installed: apt-get install -y chromium chromium-driver (.ci/run does)"
        )
    from selenium import webdriver  # lazy: only when Chromium is there to drive
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1400,1000"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(5)
    # screenshots to look at while changing the pages: <pytest's basetemp>/console-screenshots
    driver.screenshots = tmp_path_factory.getbasetemp() / "console-screenshots"
    driver.screenshots.mkdir(exist_ok=True)
    yield driver
    driver.quit()


def log_in(browser, collector) -> None:
    from selenium.webdriver.common.by import By  # lazy: with the browser fixture

    browser.get(collector.api_url + "/login")
    browser.find_element(By.NAME, "token").send_keys(TOKEN)
    browser.find_element(By.NAME, "actor").send_keys("alice")
    browser.find_element(By.CSS_SELECTOR, "form[action='/login'] button").click()
    assert browser.find_element(By.CSS_SELECTOR, "header .who").text == "alice"


def shot(browser, name: str) -> None:
    browser.save_screenshot(str(browser.screenshots / f"{name}.png"))


def test_on_call_finds_the_incident_sees_the_off_rails_step_and_pauses_the_session(loop, browser):
    from selenium.webdriver.common.by import By  # lazy: with the browser fixture

    collector, incident, span_ids = loop
    tool_calls = span_ids["tool"]
    browser.delete_all_cookies()
    browser.get(collector.api_url + "/")
    assert "/login" in browser.current_url  # not logged in yet
    shot(browser, "login")
    log_in(browser, collector)

    # the list: the incident with its SEV and class at a glance
    row = browser.find_element(By.CSS_SELECTOR, f"tr[data-id='{incident['incident_id']}']")
    assert row.find_element(By.CSS_SELECTOR, ".sev").text == "SEV2"
    assert row.find_element(By.CSS_SELECTOR, ".cls").text == "semantic"
    shot(browser, "incidents")
    row.find_element(By.CSS_SELECTOR, "td.title a").click()

    # the incident: the off-rails step highlighted, the five tool calls before it marked
    flagged = browser.find_element(By.CSS_SELECTOR, "li.step.flagged")
    off_rails = tool_calls.index(incident["span_id"])
    assert off_rails > 4  # one of the calls for order 42 (the 5th call or later)
    assert flagged.get_attribute("data-span") == incident["span_id"]
    assert "off the rails" in flagged.text and "lookup_order" in flagged.text
    assert "OrderNotFound" in flagged.text and "order 42 not found" in flagged.text
    recent = browser.find_elements(By.CSS_SELECTOR, "li.step.tool.recent")
    assert [r.get_attribute("data-span") for r in recent] == tool_calls[off_rails - 5 : off_rails]
    # the page opened with those five calls at the top of the window, the off-rails step in view
    top = "return arguments[0].getBoundingClientRect().top"
    assert browser.execute_script("return window.scrollY") > 0
    assert 0 <= browser.execute_script(top, recent[0]) < 100
    assert browser.execute_script(top, flagged) < browser.execute_script(
        "return window.innerHeight"
    )
    # LLM turns: model, tokens and finish reason; the running token curve drawn beside them
    turn = browser.find_element(By.CSS_SELECTOR, f"li[data-span='{span_ids['llm'][0]}']")
    assert "gpt-4o-mini" in turn.text and "800 in · 40 out" in turn.text
    assert "tool_calls" in turn.text
    assert browser.find_element(By.CSS_SELECTOR, ".curve svg polyline").is_displayed()
    # the user's text is shown as text, and its markup never runs
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", turn)
    turn.find_element(By.TAG_NAME, "summary").click()
    assert QUESTION in turn.find_element(By.TAG_NAME, "pre").text
    assert browser.execute_script("return window.pwned") is None
    assert browser.find_element(By.ID, "blast-sessions").text == "1 session(s)"
    assert browser.find_element(By.ID, "blast-running").text == "1 still running"
    shot(browser, "incident")
    browser.execute_script("window.scrollTo(0, 0)")
    shot(browser, "incident-top")

    # contain: pause the session, with a reason; an OpenFeature/HTTP check now says paused
    check = f"{collector.api_url}/v1/control/check"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert requests.get(check, params={"session": "loop-1"}, headers=auth).json()["state"] == (
        "enabled"
    )
    form = browser.find_element(By.XPATH, "//form[.//button[@data-action='pause_session']]")
    form.find_element(By.NAME, "reason").send_keys("looping on lookup_order")
    form.find_element(By.CSS_SELECTOR, "button").click()
    browser.switch_to.alert.accept()
    assert "Done: paused" in text_after_navigation(browser, ".flash", "Done: paused")
    decision = requests.get(check, params={"session": "loop-1"}, headers=auth).json()
    assert decision["state"] == "paused" and not decision["agent_enabled"]
    timeline = browser.find_element(By.CSS_SELECTOR, "section.timeline").text
    assert "contained alice paused" in timeline and "looping on lookup_order" in timeline
    shot(browser, "contained")

    # resolve as a false alarm: the API says so too
    resolve = browser.find_element(By.CSS_SELECTOR, "form[action$='/resolve']")
    resolve.find_element(By.NAME, "reason").send_keys("test traffic")
    resolve.find_element(By.NAME, "false_alarm").click()
    resolve.find_element(By.CSS_SELECTOR, "button").click()
    status = text_after_navigation(browser, ".head .status", "resolved")
    assert status == "resolved (false alarm)"
    shown = requests.get(
        f"{collector.api_url}/v1/incidents/{incident['incident_id']}", headers=auth
    ).json()
    assert (shown["status"], shown["resolution"]) == ("resolved", "false_alarm")


def text_after_navigation(browser, css: str, expected: str, timeout_s: float = 20) -> str:
    """The element's text once the page a form posted to has loaded (the old page's element may
    still be found, and go stale, while the browser navigates)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By  # lazy: with the browser fixture
    from selenium.webdriver.support.ui import WebDriverWait

    def loaded(b):
        found = b.find_elements(By.CSS_SELECTOR, css)
        return found and expected in found[0].text and found[0].text

    return WebDriverWait(
        browser, timeout_s, ignored_exceptions=(StaleElementReferenceException,)
    ).until(loaded)


def test_the_incidents_list_shows_a_new_incident_without_a_reload(loop, browser):
    from selenium.webdriver.common.by import By  # lazy: with the browser fixture
    from selenium.webdriver.support.ui import WebDriverWait

    collector, _, _ = loop
    log_in(browser, collector)
    browser.get(collector.api_url + "/?status=all")
    browser.execute_script("window.notReloaded = true")
    run_support_agent(collector, "loop-2", "u-3", [99] * 6, token=TOKEN)
    new = wait_for_incidents(collector, "session_id = 'loop-2'")[0]["incident_id"]
    row = WebDriverWait(browser, 20).until(
        lambda b: b.find_elements(By.CSS_SELECTOR, f"tr[data-id='{new}']")
    )[0]
    assert row.find_element(By.CSS_SELECTOR, ".sev").text in ("SEV1", "SEV2", "SEV3")
    assert browser.execute_script("return window.notReloaded") is True


# --- tenants and an open console --------------------------------------------------------------


def test_a_tenants_reader_sees_its_own_incident_and_cannot_act(loop):
    collector, _, _ = loop
    run_support_agent(collector, "acme-1", "u-9", [7] * 6, token="acme-in")
    [incident] = wait_for_incidents(collector, "tenant = 'acme'")
    page = f"{collector.api_url}/incidents/{incident['incident_id']}"

    acme = requests.Session()
    acme.post(f"{collector.api_url}/login", data={"token": "acme-read", "next": "/"})
    html = acme.get(page).text
    assert 'class="step tool' in html and "acme-1" in html  # trajectory and blast radius
    assert "/contain" not in html and "Your token reads only" in html
    answer = acme.post(
        page + "/contain",
        data={"action": "pause_session", "reason": "x", "csrf": csrf_of(html)},
    )
    assert answer.status_code == 403
    assert incident["incident_id"] in acme.get(f"{collector.api_url}/").text

    beta = requests.Session()
    beta.post(f"{collector.api_url}/login", data={"token": "beta-read", "next": "/"})
    assert beta.get(page).status_code == 404
    assert incident["incident_id"] not in beta.get(f"{collector.api_url}/").text


def test_guessing_the_token_is_cut_short(loop):
    """Last in this module: it locks 127.0.0.1 out of the login for a minute."""
    collector, _, _ = loop
    login = f"{collector.api_url}/login"
    answers = [requests.post(login, data={"token": f"guess-{n}"}).status_code for n in range(11)]
    first = answers.index(429)  # ten wrong tokens a minute, this module's earlier ones included
    assert 5 <= first <= 10 and set(answers[:first]) == {401} and set(answers[first:]) == {429}
    assert requests.post(login, data={"token": TOKEN}).status_code == 429  # even the right one
