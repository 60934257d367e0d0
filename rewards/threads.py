"""Run blocking calls on daemon threads and await them from asyncio.

A thread cannot be killed. When a call outlives its timeout we stop waiting and abandon it; a
daemon thread neither blocks the event loop's shutdown nor the interpreter's exit (a
``ThreadPoolExecutor`` would do both), so one hung reward cannot hang training.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any


def run_in_daemon_thread(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> asyncio.Future:
    """Start ``fn(*args, **kwargs)`` on a new daemon thread; the returned future gets its result."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def deliver(ok: bool, value: Any) -> None:
        if future.done():  # cancelled by a timeout: nobody waits for this result any more
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def target() -> None:
        try:
            value, ok = fn(*args, **kwargs), True
        except BaseException as e:
            value, ok = e, False
        with contextlib.suppress(RuntimeError):  # the loop has closed: the call was abandoned
            loop.call_soon_threadsafe(deliver, ok, value)

    name = getattr(fn, "__name__", type(fn).__name__)
    threading.Thread(target=target, name=f"reward:{name}", daemon=True).start()
    return future
