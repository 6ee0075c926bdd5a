"""Prometheus metrics, shared by all worker processes through prometheus_client's
multiprocess mode (the supervisor serves them on one loopback port).

The supervisor sets PROMETHEUS_MULTIPROC_DIR before this module is first imported."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram

CONNECTIONS = Counter(
    "postwall_connections_total", "SMTP connections accepted", ["listener"]
)
CONNECTIONS_REFUSED = Counter(
    "postwall_connections_refused_total", "Connections refused before the dialogue", ["reason"]
)
ACTIVE_SESSIONS = Gauge(
    "postwall_active_sessions", "SMTP sessions open now", ["listener"], multiprocess_mode="livesum"
)
MESSAGES = Counter(
    "postwall_messages_total", "Messages by final action", ["listener", "action"]
)
SYMBOL_HITS = Counter("postwall_symbol_hits_total", "Symbols emitted by filters", ["symbol"])
DOWNSTREAM_LATENCY = Histogram(
    "postwall_downstream_latency_seconds",
    "Time from DATA to the downstream's final reply",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
DNS_QUERIES = Counter(
    "postwall_dns_queries_total", "DNS questions sent, by type and outcome", ["rdtype", "status"]
)
DNS_CACHE = Counter("postwall_dns_cache_total", "DNS cache lookups", ["result"])
ERRORS = Counter("postwall_errors_total", "Errors by kind", ["kind"])
DNSBL_ZONE_SUSPENDED = Gauge(
    "postwall_dnsbl_zone_suspended",
    "1 while a DNS list zone (DNSBL, DNSWL, URIBL) is suspended by the sanity guard",
    ["zone"],
    multiprocess_mode="livemax",
)


def serve(listen: str, data_dir: Path | None = None) -> None:
    """Start the metrics HTTP endpoint in the supervisor (a daemon thread). With
    `data_dir`, the age of the last verified backup is read from it at each scrape."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    from appliance.config.schema import parse_hostport

    host, port = parse_hostport(listen)
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    if data_dir is not None:
        from appliance.backup.state import BackupAgeCollector

        registry.register(BackupAgeCollector(data_dir))
    start_http_server(port, addr=host, registry=registry)
