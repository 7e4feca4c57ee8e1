"""ttm-batch: render many shots of one API-format ComfyUI workflow on one or more ComfyUI servers.

A light package of its own (no torch): ``client`` talks to ComfyUI over HTTP and its websocket,
``jobs`` reads and validates the jobs file, ``runner`` spreads the jobs over the servers and
writes the manifest, ``cli`` is the ``ttm-batch`` command (also ``python -m ttm_batch``).
"""
