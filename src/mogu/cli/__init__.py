"""The ``mogu`` command: a thin layer over the Python API."""

from mogu.cli.main import app

__all__ = ["app"]
