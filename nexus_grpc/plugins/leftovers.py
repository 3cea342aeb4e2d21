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


def _code_of_thread(thread: threading.Thread) -> CodeType | None:
    target = getattr(thread, "_target", None)  # threading.Thread keeps it there
    function = target if target is not None else getattr(type(thread), "run", None)
    if function is threading.Thread.run:
        return None
    code = getattr(getattr(function, "__func__", function), "__code__", None)
    return code if isinstance(code, CodeType) else None


def _code_of_task(task: asyncio.Task[Any]) -> CodeType | None:
    coro = task.get_coro()
    code = getattr(coro, "cr_code", None) or getattr(coro, "gi_code", None)
    return code if isinstance(code, CodeType) else None


def _inside(code: CodeType | None, root: str) -> bool:
    return code is not None and str(Path(code.co_filename).resolve()).startswith(root)


def leftovers(package_dir: Path | None) -> list[str]:
    """Threads alive and tasks pending whose code is in ``package_dir``, described
    ("thread 'poller' (worker.py:12)"); call it from the event loop."""
    if package_dir is None:
        return []
    root = str(package_dir.resolve()) + "/"
    found = []
    for thread in threading.enumerate():
        code = _code_of_thread(thread)
        if thread.is_alive() and _inside(code, root):
            assert code is not None
            found.append(
                f"thread {thread.name!r} ({Path(code.co_filename).name}:{code.co_firstlineno})"
            )
    for task in asyncio.all_tasks():
        code = _code_of_task(task)
        if not task.done() and _inside(code, root):
            assert code is not None
            found.append(
                f"task {task.get_name()!r} running {code.co_name} "
                f"({Path(code.co_filename).name}:{code.co_firstlineno})"
            )
    return sorted(found)
