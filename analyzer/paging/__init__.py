"""Paging: incident rows in, notifications out. ``routing`` (routes, silences, matchers),
``pager`` (grouping, repeat, the outbox and retries), one file per pager in ``notifiers/``."""
