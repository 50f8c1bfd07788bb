"""loadtest.wrk: the summary parsed from wrk's output, and the request lists its script reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.wrk import WrkError, WrkResult, parse_wrk_output, write_request_set

# what wrk 4.1 printed with wrk_requests.lua against a route that answered 404 to every request
CAPTURED = """Running 1s test @ http://127.0.0.1:18620/nothere
  1 threads and 2 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.03ms    3.21ms  30.86ms   88.12%
  3056 requests in 1.02s, 459.72KB read
  Non-2xx or 3xx responses: 3056
Requests/sec:   2985.98
Transfer/sec:    449.19KB
WRK_JSON {"requests": 3056, "duration_us": 1023451, "bytes": 470756, "errors": {"connect": 0, \
"read": 0, "write": 0, "status": 3056, "timeout": 0}, "latency_us": {"mean": 2031.6, "max": \
30863, "p50": 273, "p90": 6193, "p99": 15347, "p99.9": 28187}}
"""


def test_the_json_summary_is_parsed_in_seconds_and_milliseconds() -> None:
    summary = parse_wrk_output(CAPTURED)
    assert summary["requests"] == 3056
    assert summary["duration_s"] == pytest.approx(1.023451)
    assert summary["errors"] == {"connect": 0, "read": 0, "write": 0, "status": 3056, "timeout": 0}
    assert summary["latency_ms"]["p50"] == pytest.approx(0.273)
    assert summary["latency_ms"]["p99"] == pytest.approx(15.347)
    assert summary["latency_ms"]["max"] == pytest.approx(30.863)


def test_answers_with_an_error_status_are_not_throughput() -> None:
    result = WrkResult(connections=2, client_cpu_s=0.05, **parse_wrk_output(CAPTURED))
    assert result.ok == 0 and result.throughput_rps == 0.0
    ok = WrkResult(2, 100, 2.0, {"status": 10}, {"p50": 1.0}, client_cpu_s=0.009)
    assert ok.ok == 90 and ok.throughput_rps == pytest.approx(45.0)
    assert ok.client_cpu_ms_per_request == pytest.approx(0.09)


def test_output_without_the_summary_line_is_an_error() -> None:
    text = CAPTURED.replace("WRK_JSON", "something else")
    with pytest.raises(WrkError, match="no WRK_JSON summary"):
        parse_wrk_output(text)


def test_the_request_list_names_one_file_per_distinct_body(tmp_path: Path) -> None:
    listing = write_request_set(
        tmp_path / "set",
        [
            (b"png-a", {"Content-Type": "image/png", "X-Bit-Widths": "4"}),
            (b"png-b", {"Content-Type": "image/png"}),
            (b"png-a", {"Content-Type": "image/png", "X-BitOps-Budget": "2.5e7"}),
        ],
    )
    lines = [line.split("\t") for line in listing.read_text().splitlines()]
    assert [len(f) for f in lines] == [3, 2, 3]
    assert lines[0][0] == lines[2][0] != lines[1][0]
    assert (tmp_path / "set" / lines[1][0].rsplit("/", 1)[1]).read_bytes() == b"png-b"
    assert lines[0][1:] == ["Content-Type: image/png", "X-Bit-Widths: 4"]
    assert lines[2][2] == "X-BitOps-Budget: 2.5e7"
