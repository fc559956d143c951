"""The overview's charts, drawn as SVG by the template from the geometry computed here
(bars in a 0..100 box: no script, no inline style, nothing but ``<rect>`` and ``<text>``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any


@dataclass(frozen=True)
class Bar:
    """One bar: its label, value and geometry (``x``, ``width``: SVG user units across
    the chart; ``height``: 0 to 100, the tallest bar 100)."""

    label: str
    value: int
    x: float
    width: float
    height: float


def bars(values: Sequence[tuple[str, int]], width: float = 100.0) -> list[Bar]:
    """Bars for (label, value) pairs, side by side across ``width``."""
    if not values:
        return []
    top = max(v for _, v in values) or 1
    step = width / len(values)
    return [Bar(label, value, round(n * step + step * 0.1, 2), round(step * 0.8, 2),
                round(100 * value / top, 2)) for n, (label, value) in enumerate(values)]


def overview(counts: Sequence[tuple[str, str, str, int]], backlog: Mapping[str, int],
             now: datetime) -> dict[str, Any]:
    """The overview's charts from :meth:`~recsink.catalog.Catalog.activity` counts
    (hour ``YYYY-MM-DDTHH``, source, status, n) and the backlogs (name -> how many):
    ``per_hour`` and ``failures`` (24 bars, oldest first), ``per_source``, ``backlog``,
    and the totals."""
    hours = [(now - timedelta(hours=23 - n)).strftime("%Y-%m-%dT%H") for n in range(24)]
    per_hour: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    per_source: Counter[str] = Counter()
    for hour, source, status, n in counts:
        per_hour[hour] += n
        per_source[source] += n
        if status == "failed":
            failed[hour] += n
    return {
        "per_hour": bars([(h[11:] + "h", per_hour[h]) for h in hours], 240),
        "failures": bars([(h[11:] + "h", failed[h]) for h in hours], 240),
        "per_source": bars(sorted(per_source.items()), 100),
        "backlog": bars(list(backlog.items()), 100),
        "total": sum(per_hour.values()), "total_failed": sum(failed.values()),
    }
