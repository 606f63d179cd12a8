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
        )
