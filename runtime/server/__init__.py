"""The emotion server behind ``python -m runtime.serve`` (needs the ``[serve]`` extra: aiohttp).

Modules, one stage each: ``limits`` (options, limits, JSON errors), ``batcher`` (dynamic
batching on a worker thread), ``vad`` (Silero VAD segmentation), ``metrics``
(Prometheus text), ``openapi`` (the schema), ``app`` (HTTP routes), ``stream``
(``WS /v1/stream``), ``stream_options`` (its start message), ``smoothing`` (per-stream
score smoothing), ``demo`` (the live demo page at ``/``, files in ``static/``),
``runner`` (serving with graceful shutdown), ``engine`` (picking the best engine
available).
"""
