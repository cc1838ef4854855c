"""Incidents: ``model`` (the typed records of ``incidents`` and ``incident_events``, what every
other part reads), ``lifecycle`` (findings grouped by fingerprint into incidents that open,
escalate, get acknowledged and resolve: every change to an incident, with no I/O) and
``repository`` (the SQL that writes and reads both tables)."""
