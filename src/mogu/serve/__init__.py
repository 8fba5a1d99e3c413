"""An OpenAI-compatible HTTP server for a MoGU model (``mogu serve``).

``schemas`` holds the request and response models, ``batcher`` the bounded
queue and the single generation worker, ``app`` the FastAPI routes, and
``settings`` the ``ServeConfig`` limits.
"""

from mogu.serve.app import create_app, run_server, served_name
from mogu.serve.batcher import Batcher, BatcherClosedError, Job, QueueFullError
from mogu.serve.settings import ServeConfig

__all__ = ["Batcher", "BatcherClosedError", "Job", "QueueFullError", "ServeConfig", "create_app", "run_server", "served_name"]
