"""Prometheus series of the bus, read from `BusStats` at scrape time.

Every label value is a time series for the scraper to keep, so no label takes a value
from an unbounded set:

- per **topic family** (a topic's first token; the first 100 seen, then `_other`, see
  `appliance/bus/stats.py`): `appliance_bus_messages_total`, `_bytes_total`,
  `_deliveries_total`, `_dropped_total`. Single topics are in `GET /api/v1/bus/topics`.
- per **connection**, for the `MAX_CONNECTION_SERIES` busiest live connections (by
  messages in and out), labelled by node name (stable across reconnects; `#<id>` for a
  connection without one) and principal: `appliance_bus_connection_messages_total`
  and `_bytes_total` (`direction` in/out), `appliance_bus_connection_dropped_total`.
  A connection's series end when it does.
- `appliance_bus_connections` (gauge, by transport), `appliance_bus_connections_opened_total`,
  `appliance_bus_topics_tracked`, `appliance_bus_topics_evicted_total`.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from appliance.bus.stats import TRANSPORTS, BusStats, ConnectionStats

MAX_CONNECTION_SERIES = 100


class BusCollector(Collector):
    def __init__(self, stats: BusStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Any]:
        stats = self._stats
        yield from self._families(stats)
        yield from self._connections(stats)
        live = GaugeMetricFamily(
            "appliance_bus_connections", "Open bus connections by transport", labels=["transport"]
        )
        for transport in TRANSPORTS:
            count = sum(1 for c in stats.connections.values() if c.transport == transport)
            live.add_metric([transport], count)
        yield live
        yield CounterMetricFamily(
            "appliance_bus_connections_opened",
            "Bus connections accepted since start",
            value=stats.connections_total,
        )
        yield GaugeMetricFamily(
            "appliance_bus_topics_tracked", "Topics with counters kept", value=len(stats)
        )
        yield CounterMetricFamily(
            "appliance_bus_topics_evicted",
            "Topics whose counters were forgotten to keep the bound",
            value=stats.evicted_topics,
        )

    def _families(self, stats: BusStats) -> Iterator[Any]:
        doc = "by topic family (first token; the first 100, then _other)"
        series = {
            "messages": CounterMetricFamily(
                "appliance_bus_messages", f"Messages published, {doc}", labels=["family"]
            ),
            "bytes": CounterMetricFamily(
                "appliance_bus_bytes", f"Payload bytes published, {doc}", labels=["family"]
            ),
            "deliveries": CounterMetricFamily(
                "appliance_bus_deliveries", f"Deliveries routed, {doc}", labels=["family"]
            ),
            "dropped": CounterMetricFamily(
                "appliance_bus_dropped",
                f"Deliveries lost to slow-consumer policies, {doc}",
                labels=["family"],
            ),
        }
        for family, counters in stats.family_counters():
            for name, metric in series.items():
                metric.add_metric([family], getattr(counters, name))
        yield from series.values()

    def _connections(self, stats: BusStats) -> Iterator[Any]:
        labels = ["node", "principal"]
        messages = CounterMetricFamily(
            "appliance_bus_connection_messages",
            "Messages a connection published (in) and was delivered (out)",
            labels=[*labels, "direction"],
        )
        payload = CounterMetricFamily(
            "appliance_bus_connection_bytes",
            "Payload bytes a connection published (in) and was delivered (out)",
            labels=[*labels, "direction"],
        )
        dropped = CounterMetricFamily(
            "appliance_bus_connection_dropped",
            "Deliveries to a connection lost to its slow-consumer policies",
            labels=labels,
        )
        busiest = heapq.nlargest(
            MAX_CONNECTION_SERIES,
            stats.connections.values(),
            key=lambda c: c.messages_in + c.messages_out,
        )
        for conn in busiest:
            names = _labels(conn)
            messages.add_metric([*names, "in"], conn.messages_in)
            messages.add_metric([*names, "out"], conn.messages_out)
            payload.add_metric([*names, "in"], conn.bytes_in)
            payload.add_metric([*names, "out"], conn.bytes_out)
            dropped.add_metric(names, conn.dropped)
        yield from (messages, payload, dropped)


def _labels(conn: ConnectionStats) -> list[str]:
    return [conn.node or f"#{conn.id}", conn.principal or ""]
