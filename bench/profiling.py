"""py-spy sampling of live processes, summarised into the few lines a reader needs."""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

from bench.common import PY, ROOT

_OWN = tuple(f"{ROOT}/{pkg}/" for pkg in ("worker", "connectors", "policies"))


def py_spy() -> str | None:
    return shutil.which("py-spy", path=str(Path(PY).parent)) or shutil.which("py-spy")


def record(pid: int | None, out: Path, seconds: float, *, subprocesses: bool = False,
           command: list[str] | None = None) -> subprocess.Popen[bytes] | None:
    """Start py-spy on ``pid`` (or run ``command`` under it); None when unavailable."""
    exe = py_spy()
    if exe is None:
        return None
    args = [exe, "record", "--format", "raw", "--full-filenames", "--rate", "200",
            "--output", str(out)]
    if subprocesses:
        args.append("--subprocesses")
    if command is not None:
        args += ["--", *command]
    else:
        args += ["--nonblocking", "--duration", str(max(1, round(seconds))), "--pid", str(pid)]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _frame(label: str) -> tuple[str, str]:
    """'func (path/to/file.py:12)' -> (func, 'to/file.py')."""
    label = label.strip()
    if " (" not in label or not label.endswith(")"):
        return label, ""
    func, _, where = label.rpartition(" (")
    path = where[:-1].rsplit(":", 1)[0]
    parts = Path(path).parts
    return func, "/".join(parts[-2:])


def _package(path: str, full: str) -> str:
    for marker in ("site-packages/", "lib/python3"):
        if marker in full:
            rest = full.split(marker, 1)[1]
            return rest.split("/")[0 if marker == "site-packages/" else 1].removesuffix(".py")
    for own in ("worker", "connectors", "policies", "bench"):
        if full.startswith(f"{ROOT}/{own}/"):
            return own
    return path.split("/", maxsplit=1)[0] or "?"


def summarise(raw: Path, top: int = 8) -> dict[str, Any]:
    """Top self-time functions, inclusive share of our own functions, and self time by
    package, from a py-spy ``--format raw`` (collapsed stacks) file."""
    if not raw.exists():
        return {"error": "no profile written"}
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    by_package: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if " (" in f]
        if not frames:
            continue
        total += count
        leaf = frames[-1]
        func, path = _frame(leaf)
        full = leaf.rpartition(" (")[2]
        self_time[f"{func} ({path})"] += count
        by_package[_package(path, full)] += count
        seen = set()
        for f in frames:
            fn, p = _frame(f)
            full_f = f.rpartition(" (")[2]
            if full_f.startswith(_OWN):
                key = f"{fn} ({p})"
                if key not in seen:
                    seen.add(key)
                    inclusive[key] += count
    if not total:
        return {"error": "no samples"}

    def share(counter: Counter[str], n: int) -> list[list[Any]]:
        return [[k, round(100 * v / total, 1)] for k, v in counter.most_common(n)]

    return {"samples": total, "self_pct": share(self_time, top),
            "own_code_inclusive_pct": share(inclusive, top + 4),
            "self_by_package_pct": share(by_package, top)}
