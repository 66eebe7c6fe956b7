"""Prometheus metrics exported at /metrics (prometheus-client)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

HTTP_REQUESTS = Counter("rime_http_requests_total", "HTTP requests served by the API", ["method", "route", "status"])
HTTP_LATENCY = Histogram(
    "rime_http_request_duration_seconds",
    "Time to serve an HTTP request",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RATE_LIMITED = Counter("rime_rate_limited_total", "Requests refused with 429", ["group"])
AUDIT_WRITE_FAILURES = Counter("rime_audit_write_failures_total", "Audit entries that could not be written")
AUDIT_DROPPED = Counter(
    "rime_audit_dropped_total",
    "Audit entries of failed logins (401) not written: over their per-address or total limit",
)
DAGSTER_ERRORS = Counter("rime_dagster_errors_total", "Failed calls to Dagster", ["operation"])
RUN_WATCH_READERS = Gauge("rime_run_watch_readers", "Pipeline runs whose event log a shared reader is following")
RUN_WATCH_CLIENTS = Gauge("rime_run_watch_clients", "WebSocket and SSE clients following pipeline runs")
RUN_WATCH_READS = Counter("rime_run_watch_reads_total", "Event-log reads made by the shared run readers")
ALERT_STREAM_CLIENTS = Gauge("rime_alert_stream_clients", "WebSocket clients of the alert stream (/ws/alerts)")
ALERT_STREAM_READS = Counter("rime_alert_stream_reads_total", "Reads of alert_events made by the alert stream reader")
ALERT_STREAM_EVENTS = Counter("rime_alert_stream_events_total", "Alert events the alert stream reader passed on")
ALERT_STREAM_DROPPED = Counter(
    "rime_alert_stream_dropped_total", "Alert-stream clients dropped for falling too far behind"
)
DEFINITIONS_RELOADS = Counter(
    "rime_definitions_reloads_total", "Reloads of the Dagster code location made by this process"
)
DEFINITIONS_RELOAD_SECONDS = Histogram(
    "rime_definitions_reload_seconds",
    "Time Dagster took to reload the code location",
    buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120),
)
DEFINITIONS_LAG = Gauge(
    "rime_definitions_lag_generations", "Committed definitions changes Dagster does not serve yet (last seen)"
)
