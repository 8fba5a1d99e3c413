"""Waiting for a server the tests started as a process of its own."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx


def wait_until_up(process: subprocess.Popen, url: str, timeout: float, log_path: Path, poll_s: float = 0.5) -> None:
    """Return once ``url`` answers 200; raise with the end of the server's log if the process exits or
    ``timeout`` seconds pass first (the caller stops the process)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited with {process.returncode}:\n{tail(log_path)}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(poll_s)
    raise RuntimeError(f"{url} did not answer within {timeout} s:\n{tail(log_path)}")


def tail(log_path: Path) -> str:
    """The last 3000 characters of a server's log."""
    return log_path.read_text(errors="replace")[-3000:] if log_path.exists() else ""
