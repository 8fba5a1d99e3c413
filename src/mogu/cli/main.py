"""The ``mogu`` command line: a thin layer over the Python API. Each command lives in the module of its group;
importing them registers them on the app."""

from mogu.cli import eval_command, generate_commands, serve_command, train_commands  # noqa: F401
from mogu.cli.common import app

__all__ = ["app"]
