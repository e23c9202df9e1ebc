"""Named crash points, for the fault suite only.

With ``JITGATE_CRASH_DIR`` set, a process reaching point ``P`` exits at once (like a
SIGKILL: no cleanup, no ack) if the file ``<crash dir>/P`` exists. The file is removed
first, so exactly one process crashes per file and the redelivered work then runs
through. Unset (production), a crash point costs one attribute check.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CRASH_POINTS", "crash_point"]

CRASH_POINTS = (
    "grant.before_target",
    "grant.after_target",
    "grant.after_commit",
    "revoke.before_target",
    "revoke.after_target",
    "revoke.after_commit",
)


def crash_point(crash_dir: Path | None, name: str) -> None:
    if crash_dir is None:
        return
    try:
        (crash_dir / name).unlink()  # claim it: only one process may take this crash
    except FileNotFoundError:
        return
    os._exit(137)
