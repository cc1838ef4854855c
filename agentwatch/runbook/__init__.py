"""The runbook template (agentwatch/cli/runbook.py renders it)."""
