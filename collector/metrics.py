"""Prometheus metrics of one collector, on a registry of its own (several may run in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "agentwatch_otlp_requests",
            "OTLP export requests by protocol and outcome",
            ["protocol", "outcome"],
            registry=r,
        )
        self.spans_received = Counter(
            "agentwatch_spans_received", "Spans received", ["protocol"], registry=r
        )
        self.spans_rejected = Counter(
            "agentwatch_spans_rejected", "Spans rejected as malformed", ["protocol"], registry=r
        )
        self.requests_read = Counter(
            "agentwatch_otlp_requests_read",
            "Requests by the reader that turned them into columns: native (the C reader) or"
            " python (OTLP/JSON, requests the C reader leaves alone, or no C reader built)",
            ["reader"],
            registry=r,
        )
        self.spans_stored = Counter(
            "agentwatch_spans_stored", "Spans committed to the store", registry=r
        )
        self.spans_refused = Counter(
            "agentwatch_spans_refused",
            "Spans refused with a retryable status (overload, store down)",
            ["reason"],
            registry=r,
        )
        self.queue_spans = Gauge(
            "agentwatch_write_queue_spans", "Spans waiting for the next commit", registry=r
        )
        self.insert_seconds = Histogram(
            "agentwatch_store_insert_seconds",
            "Time of one group-commit insert",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.insert_spans = Histogram(
            "agentwatch_store_insert_spans",
            "Spans per group-commit insert",
            buckets=(1, 10, 100, 512, 1000, 2500, 5000, 10000, 20000, 50000),
            registry=r,
        )
        self.forward_sent = Counter(
            "agentwatch_forward_requests_sent", "Requests forwarded downstream", registry=r
        )
        self.forward_dropped = Counter(
            "agentwatch_forward_requests_dropped",
            "Requests not forwarded, by reason",
            ["reason"],
            registry=r,
        )
        self.forward_retries = Counter(
            "agentwatch_forward_retries", "Forwarding attempts that will be retried", registry=r
        )
        self.forward_queue = Gauge(
            "agentwatch_forward_queue_requests", "Requests waiting to be forwarded", registry=r
        )
        self.unpriced_models = Gauge(
            "agentwatch_unpriced_models",
            "Distinct model names seen without a price (cost 0)",
            registry=r,
        )
        self.page_attempts = Counter(
            "agentwatch_page_attempts",
            "Sends to a pager, by receiver, action and outcome (sent, retry, failed)",
            ["receiver", "action", "outcome"],
            registry=r,
        )
        self.pages_pending = Gauge(
            "agentwatch_pages_pending", "Notifications in the outbox not yet settled", registry=r
        )
        self.control_changes = Counter(
            "agentwatch_control_changes",
            "Containment changes, by mode set (enabled: lifted) and source (person, policy)",
            ["mode", "source"],
            registry=r,
        )
        self.controls_in_force = Gauge(
            "agentwatch_controls_in_force", "Containment controls in force now", registry=r
        )
        # no tenant label: without tenant tokens the tenant is whatever the span says
        self.drill_claims_refused = Counter(
            "agentwatch_drill_claims_refused",
            "Spans claiming a gameday drill (agentwatch.drill) no admin started in their tenant"
            " and service, or one that ended: stored and judged as production",
            registry=r,
        )
        self.detection_skipped_spans = Counter(
            "agentwatch_detection_skipped_spans",
            "Spans stored but not analysed because the detection process was down",
            registry=r,
        )
