"""The emotion server behind ``python -m runtime.serve`` (needs the ``[serve]`` extra: aiohttp).

Modules, one stage each: ``limits`` (options, limits, JSON errors), ``connections`` (the
connection cap and head/keep-alive deadlines below aiohttp), ``access`` (API key, Host and
Origin), ``forms`` (request bodies to audio and text, the body budget), ``state`` (what the
handlers share), ``batcher`` (dynamic batching on a worker thread), ``vad`` (Silero VAD
segmentation), ``metrics`` (Prometheus text), ``memory`` (freed memory back to the system),
``openapi`` (the schema), ``app`` (HTTP routes), ``stream`` (``WS /v1/stream``),
``stream_options`` (its start message), ``smoothing`` (per-stream score smoothing), ``demo``
(the live demo page at ``/``, files in ``static/``), ``runner`` (serving, access log,
graceful shutdown). See ``docs/server.md`` for the limits, status codes and the stream
protocol.
"""
