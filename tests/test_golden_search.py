"""Golden runs and the sessions search, as on-call uses them: a real collector, two real runs of
the support agent through the OTel SDK (a good one, then one that loops on a missing order and
opens an incident), the console in headless Chromium, the API and the CLI.
"""

from __future__ import annotations

import pytest
import requests
from click.testing import CliRunner

from agentwatch.cli.main import main as cli
from tests.conftest import run_collector
from tests.console.agent import run_support_agent
from tests.test_console import (  # noqa: F401 (browser: a fixture)
    TOKEN,
    browser,
    csrf_of,
    log_in,
    logged_in,
    shot,
    text_after_navigation,
)
from tests.test_detect_e2e import agent_tracer, wait_for_incidents

GOOD_ORDERS = [1, 2, 3, 4, 5]
BAD_ORDERS = [1, 2, 3, 4] + [42] * 8  # diverges at the 5th call, then loops on order 42
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TENANTS = {"acme": {"ingest_token": "acme-in", "read_token": "acme-read"}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A collector holding the good run (session good-1 of user u-good) and the failing run
    (session bad-1 of u-bad) with its loop incident."""
    with run_collector(
        tmp_path_factory.mktemp("golden"), api_token=TOKEN, tenants=TENANTS
    ) as collector:
        good = run_support_agent(collector, "good-1", "u-good", GOOD_ORDERS, token=TOKEN)
        bad = run_support_agent(collector, "bad-1", "u-bad", BAD_ORDERS, token=TOKEN)
        incidents = wait_for_incidents(collector, "detector = 'loop' AND session_id = 'bad-1'")
        incident = min(incidents, key=lambda i: (i["first_seen"], i["incident_id"]))
        yield collector, incident, good, bad


def cli_run(collector, *args: str):
    return CliRunner().invoke(cli, [*args, "--api-url", collector.api_url, "--token", TOKEN])


# --- search over plain HTTP --------------------------------------------------------------------


def test_search_finds_sessions_by_each_filter_and_links_to_the_trajectory(runs):
    collector, _, good, bad = runs
    web = logged_in(collector)

    def found(**query) -> list[str]:
        html = web.get(f"{collector.api_url}/sessions", params=query).text
        return [part.split('"', 1)[0] for part in html.split('data-session="')[1:]]

    assert found(user="u-good") == ["good-1"]
    assert found(session="bad-1") == ["bad-1"]
    assert sorted(found(agent="support", service="support-svc")) == ["bad-1", "good-1"]
    assert found(user="u-good", session="bad-1") == []  # every filter given must hold
    assert found(user="nobody") == []
    assert found(since="2001-01-01T00:00", until="2001-01-02T00:00", agent="support") == []
    trace = collector.query("SELECT TraceId FROM session_traces WHERE SessionId = 'bad-1'")
    assert found(trace=trace[0]["TraceId"]) == ["bad-1"]

    page = web.get(f"{collector.api_url}/sessions", params={"user": "u-good"}).text
    assert 'href="/sessions/good-1?tenant=default"' in page
    trajectory = web.get(f"{collector.api_url}/sessions/good-1?tenant=default").text
    assert trajectory.count('class="step tool') == len(GOOD_ORDERS)
    assert all(span in trajectory for span in good["tool"])
    assert "Mark as golden" in trajectory


def test_a_bad_time_is_said_plainly_and_a_tenants_reader_finds_its_own_sessions_only(runs):
    collector, _, _, _ = runs
    web = logged_in(collector)
    page = web.get(f"{collector.api_url}/sessions", params={"since": "yesterday"})
    assert page.status_code == 200 and "a time is YYYY-MM-DD HH:MM (UTC)" in page.text

    run_support_agent(collector, "acme-s1", "u-acme", [5], token="acme-in")
    acme = requests.Session()
    acme.post(f"{collector.api_url}/login", data={"token": "acme-read", "next": "/"})
    assert (
        'data-session="acme-s1"'
        in acme.get(f"{collector.api_url}/sessions", params={"agent": "support"}).text
    )
    mine = acme.get(f"{collector.api_url}/sessions", params={"agent": "support"}).text
    assert 'data-session="good-1"' not in mine
    assert acme.get(f"{collector.api_url}/sessions/good-1?tenant=default").status_code == 404
    assert "Mark as golden" not in acme.get(f"{collector.api_url}/sessions/acme-s1").text


def test_a_trace_no_session_names_is_found_by_its_id_and_shown_step_by_step(runs):
    collector, _, _, _ = runs
    provider, tracer = agent_tracer(collector, "batch-svc", TOKEN)
    with tracer.start_as_current_span("invoke_agent nightly") as root:
        with tracer.start_as_current_span(
            "execute_tool reindex",
            attributes={"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "reindex"},
        ):
            pass
    provider.shutdown()
    trace = format(root.get_span_context().trace_id, "032x")
    web = logged_in(collector)
    page = web.get(f"{collector.api_url}/sessions", params={"trace": trace}).text
    assert f'href="/traces/{trace}?tenant=default"' in page and "(no session)" in page
    run = web.get(f"{collector.api_url}/traces/{trace}?tenant=default").text
    assert f"trace {trace}" in run and "reindex" in run and "Mark as golden" not in run
    assert web.get(f"{collector.api_url}/traces/{'0' * 32}").status_code == 404


# --- marking, over the API and the CLI ---------------------------------------------------------


def test_marking_needs_the_admin_token_and_a_session_that_exists(runs):
    collector, _, _, _ = runs
    url = f"{collector.api_url}/v1/golden"
    body = {"session_id": "good-1", "label": "order status"}
    assert requests.post(url, json=body).status_code == 401
    reader = {"Authorization": "Bearer acme-read"}
    assert requests.post(url, json=body, headers=reader).status_code == 403
    assert requests.get(url, headers=reader).json() == []  # acme has no golden run

    missing = requests.post(url, json={**body, "session_id": "nope"}, headers=AUTH)
    assert missing.status_code == 404 and "no stored trace names session 'nope'" in missing.text
    wrong = cli_run(collector, "golden", "mark", "good-1", "--agent", "billing", "--label", "x")
    assert wrong.exit_code != 0 and "ran agent 'support', not 'billing'" in wrong.output
    bad_label = requests.post(url, json={**body, "label": "<b>"}, headers=AUTH)
    assert bad_label.status_code == 400 and "label:" in bad_label.text


def test_the_cli_marks_and_lists_and_a_new_mark_replaces_the_old(runs):
    collector, incident, _, _ = runs
    marked = cli_run(collector, "golden", "mark", "bad-1", "--agent", "support",
                     "--label", "refund", "--actor", "bob")  # fmt: skip
    assert marked.exit_code == 0, marked.output
    assert "golden run of support / refund: session bad-1" in marked.output
    cli_run(collector, "golden", "mark", "good-1", "--label", "refund", "--actor", "bob")
    listed = cli_run(collector, "golden", "list", "--label", "refund")
    assert listed.exit_code == 0, listed.output
    header, row = listed.output.strip().splitlines()
    assert header.split()[:3] == ["AGENT", "LABEL", "SESSION"]
    assert row.split()[:3] == ["support", "refund", "good-1"]

    # without scripts, the incident's link opens the diff as a page of its own
    web = logged_in(collector)
    page = web.get(f"{collector.api_url}/incidents/{incident['incident_id']}/golden").text
    assert "support / <b>refund</b>: session" in page and "Diverges at step <b>5</b>" in page


# --- in a real browser ------------------------------------------------------------------------


def test_on_call_marks_the_good_run_and_sees_where_the_failing_run_diverged(runs, browser):  # noqa: F811
    from selenium.webdriver.common.by import By  # lazy: with the browser fixture
    from selenium.webdriver.support.ui import Select, WebDriverWait

    collector, incident, good, bad = runs
    log_in(browser, collector)

    # search by user, open the good run from the results
    browser.find_element(By.LINK_TEXT, "Sessions").click()
    form = browser.find_element(By.ID, "search")
    form.find_element(By.NAME, "user").send_keys("u-good")
    form.find_element(By.CSS_SELECTOR, "button").click()
    results = browser.find_elements(By.CSS_SELECTOR, "#results tbody tr")
    assert [r.get_attribute("data-session") for r in results] == ["good-1"]
    assert "u-good" in results[0].text and "support" in results[0].text
    shot(browser, "sessions-search")
    results[0].find_element(By.LINK_TEXT, "good-1").click()

    # its trajectory, and the "mark as golden" form
    assert browser.find_element(By.ID, "title").text.startswith("session good-1")
    steps = browser.find_elements(By.CSS_SELECTOR, "li.step.tool")
    assert [s.get_attribute("data-span") for s in steps] == good["tool"]
    mark = browser.find_element(By.CSS_SELECTOR, "form.mark-golden")
    assert mark.find_element(By.NAME, "agent").get_attribute("value") == "support"
    mark.find_element(By.NAME, "label").send_keys("order status")
    mark.find_element(By.NAME, "note").send_keys("looked up every order once")
    mark.find_element(By.CSS_SELECTOR, "button").click()
    flash = text_after_navigation(browser, ".flash", "Marked as the golden run")
    assert "support / order status" in flash
    assert "golden: support / order status" in browser.find_element(By.ID, "title").text
    golden = requests.get(f"{collector.api_url}/v1/golden", headers=AUTH).json()
    assert [(g["session_id"], g["marked_by"]) for g in golden if g["label"] == "order status"] == [
        ("good-1", "alice")
    ]
    shot(browser, "session-marked")

    # the incident page: the failing run aligned against it, the divergent step marked
    browser.get(f"{collector.api_url}/incidents/{incident['incident_id']}")
    summary = WebDriverWait(browser, 20).until(lambda b: b.find_elements(By.ID, "golden-summary"))[
        0
    ]
    label = Select(browser.find_element(By.NAME, "label"))  # two labels: order status, refund
    assert sorted(o.text for o in label.options) == ["order status", "refund"]
    if label.first_selected_option.text != "order status":
        label.select_by_visible_text("order status")
        browser.find_element(By.CSS_SELECTOR, "form.golden-label button").click()
        summary = browser.find_element(By.ID, "golden-summary")
    assert (
        "Diverges at step 5" in summary.text and "lookup_order with other arguments" in summary.text
    )
    assert "tool calls 12 vs 5 golden" in summary.text
    rows = browser.find_elements(By.CSS_SELECTOR, "table.golden-diff tbody tr")
    assert [r.get_attribute("data-op") for r in rows] == ["same"] * 4 + ["args"] + ["extra"] * 7
    divergent = browser.find_element(By.CSS_SELECTOR, "table.golden-diff tr.divergent")
    assert divergent.get_attribute("data-run-span") == bad["tool"][4]
    assert "diverges here" in divergent.text
    assert '{"order_id":5}' in divergent.text and '{"order_id":42}' in divergent.text
    assert "failed" in divergent.text
    # the off-rails call is among the extra calls, and each extra call's tokens are a delta
    flagged = browser.find_element(By.CSS_SELECTOR, "table.golden-diff tr.flagged")
    assert flagged.get_attribute("data-run-span") == incident["span_id"]
    assert flagged.get_attribute("data-op") == "extra"
    assert flagged.find_element(By.CSS_SELECTOR, "td:last-child").text.startswith("+")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", divergent)
    shot(browser, "incident-golden-diff")
