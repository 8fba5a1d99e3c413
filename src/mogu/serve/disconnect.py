"""Waiting on a request's work while watching for its client to leave."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

from fastapi import Request

DISCONNECT_POLL_S = 0.5  # how often a waiting request checks whether its client is still there

T = TypeVar("T")


class ClientGone(Exception):
    """The client disconnected before its answer started."""


async def watched(work: Awaitable[T], request: Request) -> T:
    """Await ``work`` (a coroutine); cancel it and raise ``ClientGone`` if the client disconnects meanwhile."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise ClientGone
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def next_event(events: asyncio.Queue[tuple[str, Any]], request: Request) -> tuple[str, Any]:
    """The job's next event; raises ``ClientGone`` if the client disconnects meanwhile."""
    while True:
        try:
            return await asyncio.wait_for(events.get(), DISCONNECT_POLL_S)
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                raise ClientGone from None
