"""Ctrl-C during training lands on a step boundary.

Python turns SIGINT into a KeyboardInterrupt at whatever bytecode runs next; when that is a finalizer or a callback
called from C, the exception is printed as "Exception ignored" and lost, and the run goes on as if nothing was pressed.
A handler that only records the request cannot be lost that way: the loop asks `requested()` at each step and raises
the KeyboardInterrupt itself, at a point where the last checkpoint is whole. A second Ctrl-C interrupts at once.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def interrupts_at_step_boundaries() -> Iterator[Callable[[], bool]]:
    """Yield `requested()`; a request still pending when the block ends (pressed during the last validation, say) is
    raised there. Outside the main thread, where signal handlers cannot be installed, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    pending = False

    def record(signum: int, frame: object) -> None:
        nonlocal pending
        if pending:
            raise KeyboardInterrupt
        pending = True

    previous = signal.signal(signal.SIGINT, record)
    try:
        yield lambda: pending
    finally:
        signal.signal(signal.SIGINT, previous)
    if pending:
        raise KeyboardInterrupt
