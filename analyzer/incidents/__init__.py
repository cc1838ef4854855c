"""Incidents: ``model`` (the typed records of ``incidents`` and ``incident_events``, what every
other part reads) and ``lifecycle`` (findings grouped by fingerprint into incidents that open,
escalate, get acknowledged and resolve; it produces records and does no I/O)."""
