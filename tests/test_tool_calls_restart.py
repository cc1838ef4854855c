"""Asked-for tool calls across a restart: ``OutputToolCalls`` is stored, so the replay of recent
steps (``analyzer/restore.py``) rebuilds a half-seen loop of an agent that sends no tool spans.

A module of its own: chDB opens one data directory per process at a time, and
``tests/test_tool_calls.py`` keeps one collector open for its module.
"""

from __future__ import annotations

import uuid

import pytest

from tests.agents.fake_openai import FakeOpenAI
from tests.conftest import run_collector
from tests.test_detect_e2e import wait_for_incidents
from tests.test_tool_calls import run_agent


@pytest.fixture
def fake_openai():
    server = FakeOpenAI()
    yield server
    server.close()


def test_asked_for_calls_are_remembered_across_a_restart(tmp_path, fake_openai):
    """The column is stored, so the restart replay rebuilds a half-seen loop from it."""
    session = f"sess-{uuid.uuid4().hex[:12]}"
    args = ("--model", "gpt-4o-loop", "--service", "restarted")
    with run_collector(tmp_path / "data") as first:
        # the model asks for lookup_order three times: one short of a loop
        run_agent(first, fake_openai, "openllmetry", *args, "--turns", "2", session=session)
        first.wait_for_rows(
            f"SELECT 1 FROM agent_spans WHERE SessionId = '{session}' AND StepKind = 'llm'", 3
        )
        assert wait_for_incidents(first, "detector = 'loop'", timeout_s=1.0) == []
    with run_collector(tmp_path / "data") as second:
        # ... and once more after the restart: the fourth identical call
        run_agent(second, fake_openai, "openllmetry", *args, "--turns", "0", session=session)
        [incident] = wait_for_incidents(second, f"detector = 'loop' AND session_id = '{session}'")
        assert incident["kind"] == "repeated_call"
