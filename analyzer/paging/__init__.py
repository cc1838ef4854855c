"""Paging: incidents in, notifications out, as a pipeline of stages (Alertmanager's notify
pipeline): ``routing`` (routes, silences, matchers), ``silencer``, ``grouping`` (group wait),
``outbox`` (durable, in order), ``repeat`` (dedup/repeat), ``retry_stage``, ``notifiers/`` (one
file per pager). ``pager`` wires them; ``store`` holds all of paging's SQL. See ``pager``."""
