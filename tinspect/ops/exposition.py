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

Histograms need two things more than a plain sum of lines. A bucket's
``le`` is a number, not a string: ``le="1"`` of one worker and ``le="1.0"``
of another are the same bucket (`_canonical_le`). And the text format wants
each series of a histogram together, its buckets in increasing ``le`` with
``+Inf`` last, then ``_sum`` and ``_count`` (Prometheus' exposition format
notes); a label set that only a later worker has would otherwise land after
the others' lines in an order nobody chose, so histogram families are
written out sorted per series (`_histogram_order`).
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
    histograms: set[str] = set()  # families whose TYPE says histogram
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
                    if parts[1] == "TYPE" and len(parts) == 4 and parts[3].strip() == "histogram":
                        histograms.add(family)
                    series.setdefault(family, {})
                continue
            key, value = _sample(line)
            if not family or not key.startswith(family):
                family = key.partition("{")[0]
                families.setdefault(family, [])
            if family in histograms and key.startswith(family + "_bucket{"):
                key = _canonical_le(key)
            samples = series.setdefault(family, {})
            samples[key] = samples.get(key, 0) + value
    out: list[str] = []
    for family, meta in families.items():
        out += meta
        samples = series.get(family, {})
        keys = sorted(samples, key=lambda k: _histogram_order(family, k)) if family in histograms else samples
        out += [f"{key} {_format(samples[key])}" for key in keys]
    return "\n".join(out) + "\n"


_LE = re.compile(r'(?:(?<=\{)|(?<=,))le="([^"]*)"(,?)')
_SUFFIX_ORDER = {"_bucket": 0, "_sum": 1, "_count": 2}


def _le_of(key: str) -> tuple[str, float] | None:
    """A bucket key's labels without ``le`` and its ``le`` as a number (``None``: no ``le``)."""
    match = _LE.search(key)
    if match is None:
        return None
    try:
        bound = float(match.group(1))  # float() reads "+Inf" too
    except ValueError:
        raise ExpositionError(f"not a bucket bound in {key!r}") from None
    rest = key[: match.start()] + key[match.end():]
    return rest.replace(",}", "}").replace("{}", ""), bound


def _canonical_le(key: str) -> str:
    """``key`` with its ``le`` written one way for each number (``1`` and ``1.0`` alike)."""
    found = _le_of(key)
    if found is None:
        return key
    bound = found[1]
    text = "+Inf" if bound == float("inf") else repr(bound)
    match = _LE.search(key)
    return f'{key[: match.start()]}le="{text}"{match.group(2)}{key[match.end():]}'


def _histogram_order(family: str, key: str) -> tuple:
    """Where a histogram sample goes: by series (its labels without ``le``), then
    buckets by bound, then ``_sum``, then ``_count``."""
    name, brace, labels = key.partition("{")
    suffix = name[len(family):]
    if suffix == "_bucket":
        found = _le_of(key)
        if found is not None:
            series, bound = found
            return series[len(name):], 0, bound
    return (brace + labels), _SUFFIX_ORDER.get(suffix, 3), 0.0


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
