"""With no token configured the console is open, like the API (the collector listens on loopback
only then); its forms still need the session's own form token, so another site cannot post them."""

from __future__ import annotations

import requests

from tests.console.agent import run_support_agent
from tests.test_console import csrf_of
from tests.test_detect_e2e import wait_for_incidents


def test_without_a_token_the_console_is_open_and_its_forms_still_need_their_form_token(
    collector,
):
    run_support_agent(collector, "open-1", "u-2", [5] * 6)
    [incident] = wait_for_incidents(collector, "detector = 'loop'")
    page = f"{collector.api_url}/incidents/{incident['incident_id']}"
    web = requests.Session()
    html = web.get(page).text  # no login: the first page sets the session cookie
    assert web.post(page + "/ack", data={"reason": "looking"}).status_code == 403
    assert web.post(page + "/ack", data={"reason": "looking", "csrf": csrf_of(html)}).ok
    shown = requests.get(f"{collector.api_url}/v1/incidents/{incident['incident_id']}").json()
    assert shown["status"] == "acknowledged"
    assert shown["timeline"][-1]["detail"] == "looking"
