"""Load testing and benchmarks of the service.

* :mod:`loadtest.cli` - ``python -m loadtest``: the load generator (open/closed loop, budget and
  width mixes, JSON + Markdown + PNG reports);
* :mod:`loadtest.bench` - ``make bench``: the benchmark suite behind ``docs/benchmarks.md``;
* :mod:`loadtest.soak` - a long run that watches the server's memory and latency.

See ``docs/loadtest.md``.
"""
