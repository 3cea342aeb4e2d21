"""What an old plugin generation left running after its stop hook: the common
mistakes that make a plugin leak across reloads.

Python cannot unload code; a generation is freed only when nothing refers to it any
more. A thread the plugin started (at import or in its start hook) and never joined,
or an asyncio task it created and never cancelled, keeps the whole old generation
alive and running next to the new one. After a generation's stop hook the host looks
for threads and tasks whose code lives in the plugin's folder and logs a warning
naming each (it does not kill them: only the plugin knows how to stop them cleanly).
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from types import CodeType
from typing import Any

__all__ = ["leftovers"]


def _function_of_thread(thread: threading.Thread) -> Any:
    target = getattr(thread, "_target", None)  # threading.Thread keeps it there
    function = target if target is not None else getattr(type(thread), "run", None)
    return None if function is threading.Thread.run else function


def _where(code: CodeType | None) -> str:
    if code is None:
        return ""
    return f" ({Path(code.co_filename).name}:{code.co_firstlineno})"


def leftovers(namespaces: frozenset[int]) -> list[str]:
    """Threads alive and tasks pending whose code belongs to the modules whose global
    namespaces (``id(module.__dict__)``) are ``namespaces`` — one generation's modules,
    not the next one's, though both come from the same files — described ("thread
    'poller' (worker.py:12)"); call it from the event loop."""
    if not namespaces:
        return []
    found = []
    for thread in threading.enumerate():
        target = _function_of_thread(thread)
        function = getattr(target, "__func__", target)
        scope = getattr(function, "__globals__", None)
        if thread.is_alive() and scope is not None and id(scope) in namespaces:
            found.append(f"thread {thread.name!r}{_where(getattr(function, '__code__', None))}")
    for task in asyncio.all_tasks():
        coro = task.get_coro()
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if not task.done() and frame is not None and id(frame.f_globals) in namespaces:
            found.append(
                f"task {task.get_name()!r} running {frame.f_code.co_name}{_where(frame.f_code)}"
            )
    return sorted(found)
