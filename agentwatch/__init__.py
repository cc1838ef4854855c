"""The application: configuration, the composition root (``agentwatch.app``), the HTTP API, the
SQL port and the CLI. The top layer: it builds ``collector`` (ingest and store) and ``analyzer``
(detection, incidents, paging, containment) and serves them; neither of those imports it.
See ARCHITECTURE.md."""
