"""Summing the expositions of several workers into one (tinspect.ops.exposition)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from tinspect.ops.exposition import ExpositionError, merge

WORKER = """# HELP tinspect_connections_open Client connections open now.
# TYPE tinspect_connections_open gauge
tinspect_connections_open {open}
# HELP tinspect_flows_total Flows ended, by the protocol they carried.
# TYPE tinspect_flows_total counter
tinspect_flows_total{{protocol="h2"}} {h2}
tinspect_flows_total{{protocol="http/1.1"}} 5
# HELP tinspect_example_seconds_total Seconds in something.
# TYPE tinspect_example_seconds_total counter
tinspect_example_seconds_total{{tap="logger x"}} {seconds}
# HELP tinspect_response_seconds Time to the response.
# TYPE tinspect_response_seconds histogram
tinspect_response_seconds_bucket{{le="0.1"}} 1
tinspect_response_seconds_bucket{{le="+Inf"}} 2
tinspect_response_seconds_sum 0.25
tinspect_response_seconds_count 2
"""


def samples(text):
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_every_series_is_the_sum_over_the_workers():
    """Gauges, counters (labelled, float) and histogram series add up; each HELP/TYPE appears once."""
    text = merge([WORKER.format(open=2, h2=1, seconds=0.5), WORKER.format(open=3, h2=0, seconds=0.25)])
    got = samples(text)
    assert got[("tinspect_connections_open", ())] == 5
    assert got[("tinspect_flows_total", (("protocol", "h2"),))] == 1
    assert got[("tinspect_flows_total", (("protocol", "http/1.1"),))] == 10
    assert got[("tinspect_example_seconds_total", (("tap", "logger x"),))] == 0.75
    assert got[("tinspect_response_seconds_bucket", (("le", "+Inf"),))] == 4
    assert got[("tinspect_response_seconds_count", ())] == 4
    assert text.count("# TYPE tinspect_flows_total counter") == 1


def test_a_series_only_one_worker_has_is_kept():
    """A label value seen in one worker only (a protocol it alone carried) stays in the sum."""
    extra = WORKER.format(open=0, h2=0, seconds=0) + 'tinspect_flows_total{protocol="websocket"} 7\n'
    got = samples(merge([WORKER.format(open=1, h2=1, seconds=0), extra]))
    assert got[("tinspect_flows_total", (("protocol", "websocket"),))] == 7


@pytest.mark.parametrize("bad", ["tinspect_x", "tinspect_x one", "{} 1"])
def test_a_malformed_line_is_refused(bad):
    """Text that is not the exposition format is an error, not a silently wrong sum."""
    with pytest.raises(ExpositionError):
        merge([bad + "\n"])


@given(st.lists(st.dictionaries(st.sampled_from(["a", "b", "c d", 'e"f']), st.integers(0, 2**53), min_size=1),
                min_size=1, max_size=5))
def test_the_sum_of_any_workers_counters_is_their_arithmetic_sum(workers):
    """Whatever counters each worker has, the merged value of each series is the sum of its values."""
    def text(counts):
        escaped = {k: k.replace('"', '\\"') for k in counts}
        return "# HELP t_total T.\n# TYPE t_total counter\n" + "".join(
            f't_total{{k="{escaped[k]}"}} {v}\n' for k, v in counts.items())

    got = samples(merge([text(w) for w in workers]))
    for key in {k for w in workers for k in w}:
        assert got[("t_total", (("k", key),))] == sum(w.get(key, 0) for w in workers)


HISTOGRAM_A = """# HELP h_seconds T.
# TYPE h_seconds histogram
h_seconds_bucket{protocol="http1",le="0.1"} 1
h_seconds_bucket{protocol="http1",le="1"} 2
h_seconds_bucket{protocol="http1",le="+Inf"} 2
h_seconds_sum{protocol="http1"} 0.5
h_seconds_count{protocol="http1"} 2
"""

HISTOGRAM_B = """# HELP h_seconds T.
# TYPE h_seconds histogram
h_seconds_bucket{protocol="websocket",le="0.1"} 0
h_seconds_bucket{protocol="websocket",le="+Inf"} 3
h_seconds_sum{protocol="websocket"} 9.0
h_seconds_count{protocol="websocket"} 3
h_seconds_bucket{protocol="http1",le="1.0"} 5
h_seconds_bucket{protocol="http1",le="0.1"} 1
h_seconds_bucket{protocol="http1",le="+Inf"} 5
h_seconds_sum{protocol="http1"} 0.25
h_seconds_count{protocol="http1"} 5
"""


def test_histogram_buckets_add_up_by_bound_not_by_spelling():
    """le="1" and le="1.0" are one bucket; every bucket, _sum and _count is the workers' sum."""
    got = samples(merge([HISTOGRAM_A, HISTOGRAM_B]))
    http1 = ("protocol", "http1")
    assert got[("h_seconds_bucket", (("le", "0.1"), http1))] == 2
    assert got[("h_seconds_bucket", (("le", "1.0"), http1))] == 7
    assert got[("h_seconds_bucket", (("le", "+Inf"), http1))] == 7
    assert got[("h_seconds_count", (http1,))] == 7 and got[("h_seconds_sum", (http1,))] == 0.75
    assert got[("h_seconds_count", (("protocol", "websocket"),))] == 3


def test_a_merged_histogram_is_written_series_by_series_in_bucket_order():
    """Each series' buckets ascend to +Inf, then _sum and _count follow, whatever order the workers used."""
    lines = [line for line in merge([HISTOGRAM_A, HISTOGRAM_B]).splitlines() if not line.startswith("#")]
    assert lines == [
        'h_seconds_bucket{protocol="http1",le="0.1"} 2',
        'h_seconds_bucket{protocol="http1",le="1.0"} 7',
        'h_seconds_bucket{protocol="http1",le="+Inf"} 7',
        'h_seconds_sum{protocol="http1"} 0.75',
        'h_seconds_count{protocol="http1"} 7',
        'h_seconds_bucket{protocol="websocket",le="0.1"} 0',
        'h_seconds_bucket{protocol="websocket",le="+Inf"} 3',
        'h_seconds_sum{protocol="websocket"} 9.0',
        'h_seconds_count{protocol="websocket"} 3',
    ]


def test_a_bucket_bound_that_is_not_a_number_is_refused():
    """A histogram bucket whose le is not a number is an error, not a bucket of its own."""
    with pytest.raises(ExpositionError):
        merge([HISTOGRAM_A.replace('le="0.1"', 'le="fast"')])


@given(st.lists(st.lists(st.floats(0, 100), max_size=20), min_size=1, max_size=4))
def test_merged_renders_are_the_histogram_of_all_observations(workers):
    """Summing workers' rendered histograms equals one histogram that saw every observation."""
    from tinspect.ops.metrics import Histogram

    def render(observations):
        h = Histogram("protocol")
        for value in observations:
            h.observe("h2", value)
        return "# HELP x_seconds X.\n# TYPE x_seconds histogram\n" + "".join(f"{s}\n" for s in h.samples("x_seconds"))

    merged = [line for line in merge([render(w) for w in workers]).splitlines() if "_sum" not in line]
    whole = [line for line in render([v for w in workers for v in w]).splitlines() if "_sum" not in line]
    assert merged == whole
