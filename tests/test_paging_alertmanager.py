"""A real Prometheus Alertmanager routes agentwatch's incidents to a local webhook receiver.

Alertmanager (Debian package ``prometheus-alertmanager``, installed by the README's test
command) runs on 127.0.0.1 with its own storage in a temp dir. Two loop incidents of one agent
(in two services) fire, arrive as one group, are not sent again although agentwatch keeps re-sending them while
they fire, and resolve. A gameday drill's incident arrives labelled ``drill="true"`` with
``[DRILL]`` in its summary, beside a production incident that carries neither.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import requests

from tests.fake_pagers import FakeReceiver
from tests.test_detect_e2e import run_agent, wait_for_incidents
from tests.test_gameday import drill_incident, run_drill
from tests.test_paging import api, eventually, outbox, paging

BINARY = "/usr/bin/prometheus-alertmanager"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def webhook():
    receiver = FakeReceiver()
    yield receiver
    receiver.close()


@pytest.fixture
def alertmanager(tmp_path: Path, webhook):
    binary = shutil.which("prometheus-alertmanager") or (BINARY if Path(BINARY).exists() else None)
    if binary is None:
        pytest.fail(
            "prometheus-alertmanager is not installed; run the README's test command, or:"
            " apt-get install -y prometheus-alertmanager"
        )
    config = tmp_path / "alertmanager.yml"
    config.write_text(
        f"""
route:
  receiver: hook
  group_by: [alertname, agent]
  group_wait: 2s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: hook
    webhook_configs:
      - url: {webhook.url}/alertmanager
        send_resolved: true
"""
    )
    port = _free_port()
    log = (tmp_path / "alertmanager.log").open("w")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.path={tmp_path / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",  # no gossip port: one instance
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"

    def ready():
        if process.poll() is not None:
            pytest.fail(f"alertmanager exited: {(tmp_path / 'alertmanager.log').read_text()}")
        try:
            return requests.get(url + "/-/ready", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    try:
        eventually(ready, timeout_s=30, what="alertmanager to be ready")
        yield url
    finally:
        process.terminate()
        process.wait(10)
        log.close()


def test_alertmanager_groups_dedups_and_resolves_agentwatch_incidents(
    collector_factory, alertmanager, webhook
):
    receiver = {"name": "am", "type": "alertmanager", "url": alertmanager, "resend_interval_s": 1}
    with collector_factory(**paging(receiver)) as collector:
        # The same agent looping in two services: two incidents, one Alertmanager group.
        run_agent(collector, "loop-am-1", "u-1", [42] * 6, service="support-us")
        run_agent(collector, "loop-am-2", "u-2", [42] * 6, service="support-eu")
        incidents = eventually(
            lambda: (rows := wait_for_incidents(collector, "detector = 'loop'")) and len(rows) == 2
            and rows,
            what="two loop incidents",
        )  # fmt: skip
        ids = {i["incident_id"] for i in incidents}

        def notifications(status=None):
            return [
                b
                for b in webhook.bodies("/alertmanager")
                if status is None or b["status"] == status
            ]

        def alert_ids(notification, status):
            return {
                a["labels"]["incident_id"] for a in notification["alerts"] if a["status"] == status
            }

        # Fires: both incidents in one group (group_by agent), labelled for routing.
        [first] = eventually(lambda: notifications("firing"), what="the firing notification")
        assert alert_ids(first, "firing") == ids
        assert first["groupLabels"] == {"alertname": "AgentIncident", "agent": "support"}
        labels = first["alerts"][0]["labels"]
        assert (labels["severity"], labels["class"], labels["detector"]) == (
            "SEV2",
            "semantic",
            "loop",
        )

        # agentwatch re-sends while firing (Alertmanager would time the alerts out otherwise) ...
        eventually(
            lambda: (
                sum(
                    r["reason"] == "repeat" and r["status"] == "sent"
                    for r in outbox(collector, "sent")
                )
                >= 6
            ),
            what="re-sends to Alertmanager",
        )
        # ... and Alertmanager deduplicates them: the group was notified once.
        assert len(notifications("firing")) == 1

        for incident_id in ids:
            api(collector, "POST", f"/v1/incidents/{incident_id}/resolve", json={})
        resolved = eventually(
            lambda: [n for n in notifications("resolved") if alert_ids(n, "resolved") == ids],
            what="the resolved notification",
        )
        assert all(a["endsAt"] > a["startsAt"] for a in resolved[0]["alerts"])
        alerts = requests.get(alertmanager + "/api/v2/alerts?active=true", timeout=5).json()
        assert [a for a in alerts if a["labels"].get("incident_id") in ids] == []


def test_a_drill_reaches_alertmanager_labelled_as_a_drill_beside_production(
    collector_factory, alertmanager, webhook
):
    receiver = {"name": "am", "type": "alertmanager", "url": alertmanager, "resend_interval_s": 1}
    with collector_factory(**paging(receiver)) as collector:
        drill_id = run_drill(collector, "loop")  # `agentwatch gameday run`: the SDK's exporter
        run_agent(collector, "real-loop", "u-1", [42] * 6)  # a production loop at the same time
        drill = drill_incident(collector, drill_id)["incident_id"]
        [real] = wait_for_incidents(collector, "NOT drill AND session_id = 'real-loop'")
        real = real["incident_id"]

        def both_active():
            alerts = requests.get(alertmanager + "/api/v2/alerts?active=true", timeout=5).json()
            found = {a["labels"].get("incident_id"): a for a in alerts}
            return {drill, real} <= found.keys() and found

        alerts = eventually(both_active, what="both incidents in Alertmanager")
        assert alerts[drill]["labels"]["drill"] == "true"
        assert alerts[drill]["annotations"]["summary"].startswith("[DRILL] support: ")
        assert "drill" not in alerts[real]["labels"]  # a production alert's labels are unchanged
        assert not alerts[real]["annotations"]["summary"].startswith("[DRILL]")
        assert alerts[drill]["labels"]["fingerprint"] != alerts[real]["labels"]["fingerprint"]

        # Alertmanager routes on the label: what it sent on carries it too
        def sent():
            return {
                a["labels"]["incident_id"]: a["labels"]
                for body in webhook.bodies("/alertmanager")
                for a in body["alerts"]
            }

        labels = eventually(lambda: {drill, real} <= (got := sent()).keys() and got,
                            what="Alertmanager's notifications")  # fmt: skip
        assert labels[drill]["drill"] == "true" and "drill" not in labels[real]
