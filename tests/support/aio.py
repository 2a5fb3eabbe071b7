"""Running a coroutine from a synchronous test."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on a loop of its own, closed afterwards.

    Not ``asyncio.run``: it ends by setting the current event loop to None, and the loop
    pytest-asyncio leaves current after every async test would then be collected unclosed, with a
    ResourceWarning (an error here) blamed on whichever test happens to be running.
    """
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
