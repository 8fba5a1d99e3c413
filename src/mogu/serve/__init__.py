"""An OpenAI-compatible HTTP server for a MoGU model (``mogu serve``).

``schemas`` holds the request and response models, ``settings`` the
``ServeConfig`` limits, ``batcher`` the bounded queue and the single
generation worker, and ``worker`` what that worker runs. ``app`` wires the
FastAPI routes: ``parsing`` validates a request, ``completions`` answers it
(``responses`` shapes the bodies and server-sent events, ``disconnect``
watches for a client that leaves), ``continuation`` hands an answer to an
engine, ``errors`` shapes every failure as OpenAI does, and ``state`` holds
what the routes share. ``server`` runs it all under uvicorn.
"""

from mogu.serve.app import create_app
from mogu.serve.batcher import Batcher, BatcherClosedError, Job, QueueFullError
from mogu.serve.server import run_server
from mogu.serve.settings import ServeConfig
from mogu.serve.state import served_name

__all__ = ["Batcher", "BatcherClosedError", "Job", "QueueFullError", "ServeConfig", "create_app", "run_server", "served_name"]
