"""Prometheus text expositions of several workers, summed into one (sans-IO).

With ``--workers N`` every worker counts in its own process. Worker 0's
``/metrics`` asks each other worker for its exposition and serves the sum,
so one scrape sees the whole proxy (Prometheus' own advice for a
multi-process exporter: aggregate before exposing, not per process).

Every tinspect series is additive: counters, histogram buckets and sums,
and the gauges (open connections, flows, resident memory, descriptors) are
all totals over the processes. Families keep the order and the HELP/TYPE
lines of their first appearance; a value keeps integer form while every
addend has it.
"""

from __future__ import annotations

import re

__all__ = ["ExpositionError", "merge"]

_KEY = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*(\{.*\})?\Z")


class ExpositionError(ValueError):
    """A line that is not in the text format."""


def merge(texts: list[str]) -> str:
    """One exposition whose every series is the sum of that series in ``texts``.

    Raises:
        ExpositionError: a line of one of the texts is malformed.
    """
    families: dict[str, list[str]] = {}  # family name -> its HELP/TYPE lines
    series: dict[str, dict[str, int | float]] = {}  # family name -> sample key (name+labels) -> value
    for text in texts:
        family = ""
        for line in text.splitlines():
            if not line.strip():
                continue
            if line.startswith("#"):
                parts = line.split(None, 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    family = parts[2]
                    meta = families.setdefault(family, [])
                    if not any(m.split(None, 2)[1] == parts[1] for m in meta):
                        meta.append(line)
                    series.setdefault(family, {})
                continue
            key, value = _sample(line)
            if not family or not key.startswith(family):
                family = key.partition("{")[0]
                families.setdefault(family, [])
            samples = series.setdefault(family, {})
            samples[key] = samples.get(key, 0) + value
    out: list[str] = []
    for family, meta in families.items():
        out += meta
        out += [f"{key} {_format(value)}" for key, value in series.get(family, {}).items()]
    return "\n".join(out) + "\n"


def _sample(line: str) -> tuple[str, int | float]:
    """``name{labels} value`` as (``name{labels}``, value)."""
    key, sep, value = line.rpartition(" ")
    key = key.strip()
    if not sep or not _KEY.match(key):
        raise ExpositionError(f"not a sample line: {line!r}")
    try:
        number: int | float = int(value)
    except ValueError:
        try:
            number = float(value)
        except ValueError:
            raise ExpositionError(f"not a number in {line!r}") from None
    return key, number


def _format(value: int | float) -> str:
    if isinstance(value, int):
        return str(value)
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)
