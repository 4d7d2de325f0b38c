"""Prometheus metrics of the mesh: events per subject, handler latency, outbox backlog, breakers, payout time."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric

from .base import Bus, BusWrapper, Event, Handler, Subscription, Unverifiable

BREAKER_STATES = ("closed", "half-open", "open")


class Telemetry:
    """One process's metrics, in a registry of its own (so that several apps in one process stay apart)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.published = Counter(
            "hms_events_published", "Events published, by subject", ["subject"], registry=self.registry
        )
        self.consumed = Counter(
            "hms_events_consumed",
            "Deliveries handled, by subject and consumer group",
            ["subject", "group"],
            registry=self.registry,
        )
        self.failed = Counter(
            "hms_events_failed",
            "Deliveries whose handler failed (retried or dead-lettered)",
            ["subject", "group"],
            registry=self.registry,
        )
        self.unverifiable = Counter(
            "hms_messages_unverifiable",
            "Messages this process could not verify (a service token signed by a key it does not know) and handed back",
            ["subject", "group"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "hms_handler_seconds",
            "Handler run time, by subject",
            ["subject"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
            registry=self.registry,
        )

    def unverifiable_total(self) -> int:
        """How many messages this process could not verify since it started (a member of another mesh, or one
        whose keys lag, shows a number here in `hms mesh status`)."""
        return int(sum(s.value for m in self.unverifiable.collect() for s in m.samples if s.name.endswith("_total")))

    def add_collector(self, collect: Callable[[], Iterator[Metric]]) -> None:
        """Add metrics computed at scrape time (outbox backlog, breakers, payout time)."""
        self.registry.register(_Collector(collect))


class _Collector:
    def __init__(self, collect: Callable[[], Iterator[Metric]]) -> None:
        self.collect = collect


def outbox_gauge(backlogs: dict[str, Callable[[], int]]) -> Iterator[Metric]:
    """hms_outbox_backlog{service}: events waiting in each outbox."""
    g = GaugeMetricFamily("hms_outbox_backlog", "Events waiting in the outbox", labels=["service"])
    for service, backlog in backlogs.items():
        g.add_metric([service], backlog())
    yield g


def breaker_gauge(states: dict[tuple[str, str], str]) -> Iterator[Metric]:
    """hms_breaker_state{service,breaker,state}: 1 for the current state of each breaker."""
    g = GaugeMetricFamily(
        "hms_breaker_state", "Circuit breaker state (1 = current)", labels=["service", "breaker", "state"]
    )
    for (service, breaker), current in states.items():
        for state in BREAKER_STATES:
            g.add_metric([service, breaker, state], 1.0 if state == current else 0.0)
    yield g


def payout_histogram(report: dict[str, Any]) -> Iterator[Metric]:
    """hms_payout_seconds: submitted → payment sent, as the metrics service records it."""
    h = HistogramMetricFamily("hms_payout_seconds", "Payout time from submission to payment sent")
    buckets, total = [], 0
    for b in report["histogram"]:
        total += b["count"]
        buckets.append(("+Inf" if b["le"] is None else repr(float(b["le"])), total))
    h.add_metric([], buckets, sum_value=report.get("sum") or 0.0)
    yield h


class InstrumentedBus(BusWrapper):
    """Any bus, counting what goes through it."""

    def __init__(self, inner: Bus, telemetry: Telemetry) -> None:
        super().__init__(inner)
        self.t = self.telemetry = telemetry

    def publish(self, subject: str, data: dict[str, Any], **kw: Any) -> Future[None]:
        future = self.inner.publish(subject, data, **kw)
        self.t.published.labels(subject).inc()
        return future

    def subscribe(self, subject: str, handler: Handler, queue: str | None = None, **options: Any) -> Subscription:
        group = queue or "-"

        def measured(event: Event) -> Any:
            started = time.perf_counter()
            try:
                result = handler(event)
            except Unverifiable:
                self.t.unverifiable.labels(event.subject, group).inc()
                raise
            except Exception:
                self.t.failed.labels(event.subject, group).inc()
                raise
            finally:
                self.t.latency.labels(event.subject).observe(time.perf_counter() - started)
            self.t.consumed.labels(event.subject, group).inc()
            return result

        return self.inner.subscribe(subject, measured, queue, **options)
