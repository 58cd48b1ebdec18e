"""Prometheus metrics of the process, in a registry of its own (no global state)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Callback(Collector):
    """Gauges read at scrape time from the objects that own the numbers."""

    def __init__(self, read: Callable[[], dict[str, tuple[str, float]]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Any]:
        for name, (doc, value) in self._read().items():
            yield GaugeMetricFamily(name, doc, value=value)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "appliance_http_requests",
            "HTTP requests by route and status class",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "appliance_http_request_duration_seconds",
            "HTTP request handling time by route",
            ["route"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
        )
        self.auth_failures = Counter(
            "appliance_auth_failures",
            "Refused credentials by reason",
            ["reason"],
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "appliance_rate_limited",
            "Requests refused by a rate limit",
            registry=self.registry,
        )

        self.task_runs = Counter(
            "appliance_task_runs",
            "Task runs by kernel and outcome",
            ["kernel", "outcome"],
            registry=self.registry,
        )
        self.task_seconds = Histogram(
            "appliance_task_run_seconds",
            "Kernel run time per task run, by kernel",
            ["kernel"],
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300),
        )

    def gauges(self, read: Callable[[], dict[str, tuple[str, float]]]) -> None:
        self.registry.register(_Callback(read))

    def render(self) -> bytes:
        return generate_latest(self.registry)
