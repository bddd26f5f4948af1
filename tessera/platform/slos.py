"""Service level objectives as data, and a checker over Prometheus exposition text.

Each :class:`SLO` names a golden signal, a measure (a quantile of a histogram, a quantile across
a gauge's series, or a ratio of counters) and a threshold the measure must not exceed. The
measures are computed the way Prometheus would (``histogram_quantile`` interpolates inside the
bucket the rank falls in), from one scrape or from the difference of two::

    before = [scrape(control_plane), scrape(gateway)]     # texts of their /metrics
    run_the_load()
    results = evaluate([scrape(control_plane), scrape(gateway)], baseline=before)
    print(render_markdown(results))

docs/slos.md explains each number.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from prometheus_client.parser import text_string_to_metric_families

Signal = Literal["latency", "errors", "traffic", "saturation"]
_CUMULATIVE = ("counter", "histogram", "summary")


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


Texts = str | Sequence[str]


def parse(texts: Texts, baseline: Texts | None = None) -> list[Sample]:
    """The samples of one scrape, or of several processes' scrapes (a control plane, gateways).
    With ``baseline``, earlier scrapes of the same processes in the same order, counters and
    histograms become the increase since then; gauges stay as they are now."""
    now = [texts] if isinstance(texts, str) else list(texts)
    olds = [baseline] if isinstance(baseline, str) else list(baseline or [""] * len(now))
    if len(olds) != len(now):
        raise ValueError(f"{len(now)} scrapes but {len(olds)} baselines")
    samples = []
    for text, old in zip(now, olds, strict=True):
        before = {_key(s): s.value for t, s in _typed(old) if t in _CUMULATIVE}
        for family_type, s in _typed(text):
            if family_type in _CUMULATIVE:
                s = Sample(s.name, s.labels, max(s.value - before.get(_key(s), 0.0), 0.0))
            samples.append(s)
    return samples


def _typed(text: str) -> Iterable[tuple[str, Sample]]:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            yield family.type, Sample(s.name, dict(s.labels), float(s.value))


def _key(s: Sample) -> tuple[str, tuple[tuple[str, str], ...]]:
    return s.name, tuple(sorted(s.labels.items()))


@dataclass(frozen=True, slots=True)
class Match:
    """One PromQL label matcher: ``=``, ``!=``, ``=~`` or ``!~`` (regexes match whole values)."""

    label: str
    op: Literal["=", "!=", "=~", "!~"]
    value: str

    def __call__(self, labels: dict[str, str]) -> bool:
        got = labels.get(self.label, "")
        if self.op in ("=", "!="):
            return (got == self.value) == (self.op == "=")
        return (re.fullmatch(self.value, got) is not None) == (self.op == "=~")

    def __str__(self) -> str:
        return f'{self.label}{self.op}"{self.value}"'


@dataclass(frozen=True, slots=True)
class Series:
    """A metric name and label matchers: ``name{a="b",c!~"d"}``."""

    name: str
    where: tuple[Match, ...] = ()

    def select(self, samples: Iterable[Sample], suffix: str = "") -> list[Sample]:
        name = self.name + suffix
        return [s for s in samples if s.name == name and all(m(s.labels) for m in self.where)]

    def promql(self, suffix: str = "") -> str:
        matchers = ",".join(str(m) for m in self.where)
        return f"{self.name}{suffix}{{{matchers}}}" if matchers else self.name + suffix


class Measure(Protocol):
    def measure(self, samples: Sequence[Sample]) -> float | None:
        """The measured value; None when the samples hold no data for it."""

    def promql(self) -> str:
        """The same measure as a PromQL expression (over a 5 minute window)."""


@dataclass(frozen=True, slots=True)
class HistogramQuantile:
    """``histogram_quantile(q, sum by (le) (...))``: buckets summed across all other labels."""

    q: float
    series: Series

    def measure(self, samples: Sequence[Sample]) -> float | None:
        buckets: dict[float, float] = {}
        for s in self.series.select(samples, "_bucket"):
            le = float(s.labels["le"])
            buckets[le] = buckets.get(le, 0.0) + s.value
        return bucket_quantile(self.q, sorted(buckets.items()))

    def promql(self) -> str:
        inner = self.series.promql("_bucket")
        return f"histogram_quantile({self.q}, sum by (le) (rate({inner}[5m])))"


def bucket_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """Prometheus' ``histogram_quantile`` over cumulative ``(le, count)`` pairs sorted by ``le``:
    linear inside the bucket the rank falls in; in the ``+Inf`` bucket, the highest finite bound."""
    if not buckets or buckets[-1][0] != math.inf or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == math.inf:
                return lower
            if count == below:
                return le
            return lower + (le - lower) * (rank - below) / (count - below)
        lower, below = le, count
    return lower


@dataclass(frozen=True, slots=True)
class GaugeQuantile:
    """The ``q`` quantile (nearest rank) of a gauge's values across its series: a fleet-wide
    measure at the moment of the scrape (``quantile(q, ...)`` in PromQL)."""

    q: float
    series: Series

    def measure(self, samples: Sequence[Sample]) -> float | None:
        values = sorted(s.value for s in self.series.select(samples))
        if not values:
            return None
        return values[max(math.ceil(self.q * len(values)) - 1, 0)]

    def promql(self) -> str:
        return f"quantile({self.q}, {self.series.promql()})"


@dataclass(frozen=True, slots=True)
class Ratio:
    """``sum(bad) / sum(all)``; each side may add several series (counters' ``_total``)."""

    bad: tuple[Series, ...]
    total: tuple[Series, ...]

    def measure(self, samples: Sequence[Sample]) -> float | None:
        total = sum(s.value for series in self.total for s in series.select(samples, "_total"))
        if total <= 0:
            return None
        return sum(s.value for series in self.bad for s in series.select(samples, "_total")) / total

    def promql(self) -> str:
        def side(series: tuple[Series, ...]) -> str:
            return " + ".join(f"sum(rate({s.promql('_total')}[5m]))" for s in series)

        return f"({side(self.bad)}) / ({side(self.total)})"


@dataclass(frozen=True, slots=True)
class SLO:
    """A named objective: ``measure`` must stay at or below ``threshold`` (in ``unit``)."""

    name: str
    component: Literal["api", "scheduler", "node", "gateway"]
    signal: Signal
    objective: str
    measure: Measure
    threshold: float
    unit: Literal["s", "ratio"]

    @property
    def promql(self) -> str:
        return self.measure.promql()


@dataclass(frozen=True, slots=True)
class SLOResult:
    slo: SLO
    value: float | None  # None: no data (nothing was measured)
    passed: bool | None = field(default=None)

    @property
    def status(self) -> str:
        return "no data" if self.passed is None else "pass" if self.passed else "FAIL"

    @property
    def measured(self) -> str:
        return "-" if self.value is None else _format(self.value, self.slo.unit)


def _format(value: float, unit: str) -> str:
    if unit == "ratio":
        return f"{value * 100:.3g}%"
    return f"{value * 1000:.3g} ms" if value < 1 else f"{value:.3g} s"


# streams answer their first byte at once and then stay open: not request latency
_STREAMS = Match("route", "!~", r"/api/v1/watch|/api/v1/jobs/\{ref\}/logs")
_API = Series("tessera_api_requests")
_NODE = Match("caller", "=", "node")
_GATEWAY = Series("tessera_gateway_requests")
_GATEWAY_503 = Series("tessera_gateway_rejected", (Match("reason", "=~", "not_synced|no_revision"),))

SLOS: tuple[SLO, ...] = (
    SLO(
        name="api-latency",
        component="api",
        signal="latency",
        objective="API p99 latency of non-watch requests <= 500 ms",
        measure=HistogramQuantile(0.99, Series("tessera_api_request_duration_seconds", (_STREAMS,))),
        threshold=0.5,
        unit="s",
    ),
    SLO(
        name="api-errors",
        component="api",
        signal="errors",
        objective="API 5xx ratio <= 0.1% of requests",
        measure=Ratio((Series(_API.name, (Match("status_class", "=", "5xx"),)),), (_API,)),
        threshold=0.001,
        unit="ratio",
    ),
    SLO(
        name="node-api-latency",
        component="node",
        signal="latency",
        objective="p99 latency of node agents' calls (heartbeats, reports) <= 1 s",
        measure=HistogramQuantile(0.99, Series("tessera_api_request_duration_seconds", (_NODE, _STREAMS))),
        threshold=1.0,
        unit="s",
    ),
    SLO(
        name="node-api-errors",
        component="node",
        signal="errors",
        objective="5xx ratio of node agents' calls <= 0.1%",
        measure=Ratio(
            (Series(_API.name, (_NODE, Match("status_class", "=", "5xx"))),), (Series(_API.name, (_NODE,)),)
        ),
        threshold=0.001,
        unit="ratio",
    ),
    SLO(
        name="node-heartbeat-age",
        component="node",
        signal="saturation",
        objective="p99 across nodes of the age of the last heartbeat <= 15 s (3 missed beats)",
        measure=GaugeQuantile(0.99, Series("tessera_node_heartbeat_age_seconds")),
        threshold=15.0,
        unit="s",
    ),
    SLO(
        name="scheduler-cycle",
        component="scheduler",
        signal="latency",
        objective="scheduler cycle p99 <= 1 s at 1k pending jobs",
        measure=HistogramQuantile(0.99, Series("tessera_scheduler_cycle_seconds")),
        threshold=1.0,
        unit="s",
    ),
    SLO(
        name="scheduler-errors",
        component="scheduler",
        signal="errors",
        objective="failed scheduling passes <= 1% of cycles",
        measure=Ratio((Series("tessera_scheduler_failed_cycles"),), (Series("tessera_scheduler_cycles"),)),
        threshold=0.01,
        unit="ratio",
    ),
    SLO(
        name="time-to-admit",
        component="scheduler",
        signal="latency",
        objective="time to admit p50 <= 2 s for a job that fits free capacity",
        measure=HistogramQuantile(0.5, Series("tessera_scheduler_time_to_admit_seconds")),
        threshold=2.0,
        unit="s",
    ),
    SLO(
        name="gateway-errors",
        component="gateway",
        signal="errors",
        objective="gateway 5xx ratio <= 0.5% (its 503s before routing included)",
        measure=Ratio(
            (Series(_GATEWAY.name, (Match("code", "=", "5xx"),)), _GATEWAY_503),
            (_GATEWAY, Series("tessera_gateway_rejected")),
        ),
        threshold=0.005,
        unit="ratio",
    ),
)


def evaluate(
    metrics_text: Texts, baseline: Texts | None = None, slos: Sequence[SLO] = SLOS
) -> list[SLOResult]:
    """Check ``slos`` against a scrape of ``/metrics``, or a list of scrapes (the control plane's
    and each gateway's). With ``baseline``, earlier scrapes of the same processes in the same
    order, counters and histograms count only what happened since (the load run's window);
    gauges are read as they are now. An SLO with nothing to measure (no requests, no nodes) is
    ``no data``: neither pass nor fail."""
    samples = parse(metrics_text, baseline)
    results = []
    for slo in slos:
        value = slo.measure.measure(samples)
        results.append(SLOResult(slo, value, None if value is None else value <= slo.threshold))
    return results


def render_markdown(results: Iterable[SLOResult]) -> str:
    """A markdown table of results, one row per SLO."""
    rows = [
        "| SLO | signal | objective | measured | status |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        slo = r.slo
        rows.append(
            f"| {slo.name} | {slo.component} {slo.signal} | {slo.objective} | {r.measured} | {r.status} |"
        )
    return "\n".join(rows) + "\n"
