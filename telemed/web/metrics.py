"""Prometheus metrics, in a registry owned by the app (not the library's global one)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from telemed import __version__


@dataclass(frozen=True, slots=True)
class Metrics:
    requests: Counter
    latency: Histogram
    logins: Counter
    backup_last_success: Gauge
    backup_failing: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> Metrics:
        info = Gauge("telemed_build_info", "Server version", ["version"], registry=registry)
        info.labels(__version__).set(1)
        return cls(
            requests=Counter(
                "telemed_http_requests",
                "HTTP requests by route and status",
                ["method", "route", "status"],
                registry=registry,
            ),
            latency=Histogram(
                "telemed_http_request_duration_seconds",
                "Time to answer an HTTP request",
                ["route"],
                registry=registry,
            ),
            logins=Counter(
                "telemed_logins", "Sign-in attempts by outcome", ["outcome"], registry=registry
            ),
            backup_last_success=Gauge(
                "telemed_backup_last_success_timestamp_seconds",
                "When the last good backup was written (Unix time; 0: none yet)",
                registry=registry,
            ),
            backup_failing=Gauge(
                "telemed_backup_failing",
                "1 when the newest scheduled backup failed",
                registry=registry,
            ),
        )
