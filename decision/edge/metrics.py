"""Prometheus metrics of one server process, served over HTTP (``--metrics-address``).

Each server process has its own registry and its own endpoint. With ``--workers N``,
worker *i* serves on the metrics port + *i* (port 9464 -> 9464, 9465, ...): every
worker is a scrape target of its own, and a restarted worker comes back on its port.
That keeps each counter a plain in-process value (no shared files, nothing to clean
up after a killed worker); sum over the targets in queries (``sum without
(instance)``). Prometheus treats the restart of a worker as a counter reset, as it
should.

Per request the cost is one cached histogram child's ``observe`` (its children are
looked up once per method and status, not per call) and, for Decide, one counter
increment per offer shown.

| metric | type | labels |
| --- | --- | --- |
| ``decision_request_seconds`` | histogram | method, code |
| ``decision_decisions_total`` | counter | channel |
| ``decision_offers_decided_total`` | counter | offer, channel |
| ``decision_events_total`` | counter | outcome (applied, duplicate, rejected) |
| ``decision_shed_requests_total`` | counter | method, reason (in_flight, deadline, watchers) |
| ``decision_requests_in_flight`` | gauge | |
| ``decision_store_map_size_bytes`` | gauge | |
| ``decision_store_used_bytes`` | gauge | |
| ``decision_store_profiles`` | gauge | |
| ``decision_catalog_info`` | gauge (1) | version |
| ``decision_catalog_offers`` | gauge | |
| ``decision_catalog_loaded_timestamp_seconds`` | gauge | |
"""

from __future__ import annotations

import logging
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger("decision.edge.metrics")

#: latency buckets (seconds): fine below a millisecond, where Decide answers
BUCKETS = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05,
           0.1, 0.25, 1.0, 5.0)


class _EngineCollector(Collector):
    """Store and catalog figures, read at scrape time (nothing per request)."""

    def __init__(self, engine):
        self.engine = engine

    def collect(self):
        env = self.engine.store.env
        info, stat = env.info(), env.stat()
        yield GaugeMetricFamily("decision_store_map_size_bytes",
                                "LMDB map size (it doubles when full)", value=info["map_size"])
        yield GaugeMetricFamily("decision_store_used_bytes", "LMDB map bytes in use "
                                "(pages up to the last one used)",
                                value=(info["last_pgno"] + 1) * stat["psize"])
        yield GaugeMetricFamily("decision_store_profiles", "profiles in the store",
                                value=self.engine.store.count())
        catalog = self.engine.catalog
        version = GaugeMetricFamily("decision_catalog_info", "the catalog serving here (1)",
                                    labels=["version"])
        version.add_metric([catalog.version], 1)
        yield version
        yield GaugeMetricFamily("decision_catalog_offers", "offers in the serving catalog",
                                value=len(catalog.offers))
        yield GaugeMetricFamily("decision_catalog_loaded_timestamp_seconds",
                                "when the serving catalog was loaded",
                                value=catalog.loaded_at_ms / 1000)


class Metrics:
    """The metrics of one server process; ``registry`` is what the endpoint serves."""

    def __init__(self, engine, in_flight: Callable[[], int]):
        self.registry = r = CollectorRegistry(auto_describe=False)
        self._latency = Histogram("decision_request_seconds",
                                  "DecisionService request latency in the handler, seconds",
                                  ["method", "code"], buckets=BUCKETS, registry=r)
        self._decisions = Counter("decision_decisions", "decisions (Decide and DecideBatch)",
                                  ["channel"], registry=r)
        self._offers = Counter("decision_offers_decided",
                               "offers returned in decisions", ["offer", "channel"],
                               registry=r)
        self._events = Counter("decision_events", "events received by Track/TrackStream",
                               ["outcome"], registry=r)
        self._shed = Counter("decision_shed_requests",
                             "requests refused at once to protect the process",
                             ["method", "reason"], registry=r)
        Gauge("decision_requests_in_flight", "DecisionService requests being worked on",
              registry=r).set_function(in_flight)
        r.register(_EngineCollector(engine))
        self._latency_children: dict[tuple[str, str], object] = {}
        self._offer_children: dict[tuple[str, str], object] = {}
        self._decision_children: dict[str, object] = {}
        self.events_applied = self._events.labels("applied")
        self.events_duplicate = self._events.labels("duplicate")
        self.events_rejected = self._events.labels("rejected")
        self._httpd = None

    def observe(self, method: str, code: str, seconds: float) -> None:
        child = self._latency_children.get((method, code))
        if child is None:
            child = self._latency_children.setdefault(
                (method, code), self._latency.labels(method, code))
        child.observe(seconds)

    def decided(self, channel: str, offer_ids) -> None:
        child = self._decision_children.get(channel)
        if child is None:
            child = self._decision_children.setdefault(channel, self._decisions.labels(channel))
        child.inc()
        children = self._offer_children
        for offer in offer_ids:
            child = children.get((offer, channel))
            if child is None:
                child = children.setdefault((offer, channel), self._offers.labels(offer, channel))
            child.inc()

    def shed(self, method: str, reason: str) -> None:
        self._shed.labels(method, reason).inc()

    # ------------------------------------------------------------ the endpoint
    def serve(self, address: str) -> int:
        """Serve ``/metrics`` on ``host:port`` (port 0: a free one); the bound port."""
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        self._httpd, _thread = start_http_server(int(port), host, registry=self.registry)
        return self._httpd.server_address[1]

    def close(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
