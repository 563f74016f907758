"""Benchmarks: ``python -m benchmarks.latency`` (engines vs the research-code baseline),
``pytest benchmarks --benchmark-only`` (micro-benchmarks) and ``benchmarks.loadgen``
(the HTTP server under load). Results live in ``benchmarks/results/<machine>/``."""
