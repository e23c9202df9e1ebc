"""``jitgate serve-metrics``: a worker pod's counters, written by its processes into
the metrics folder, served over HTTP by the real command."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serves_what_other_processes_counted(tmp_path: Path) -> None:
    folder = tmp_path / "metrics"
    env = {k: v for k, v in os.environ.items() if not k.startswith("JITGATE_")}
    env.update(JITGATE_METRICS_DIR=str(folder), JITGATE_DATA_DIR=str(tmp_path))
    writer = textwrap.dedent(f"""
        from pathlib import Path
        from worker import metrics
        assert metrics.configure(Path({str(folder)!r}))
        for _ in range(3):
            metrics.webhook_rejected("jira", 401, "missing or invalid X-Hub-Signature")
    """)
    for _ in range(2):  # two processes, as a worker's prefork children
        subprocess.run([sys.executable, "-c", writer], env=env, check=True, timeout=60)
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "worker", "serve-metrics", "--port", str(port),
         "--host", "127.0.0.1"], env=env, stderr=subprocess.PIPE)
    try:
        body = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    body = r.read().decode()
                break
            except OSError:
                time.sleep(0.2)
        lines = [line for line in body.splitlines()
                 if line.startswith("jitgate_webhooks_rejected_total{")]
        assert lines, body[:500]
        assert any('source="jira"' in line and line.endswith(" 6.0") for line in lines), lines
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=20) == 0


def test_refuses_a_missing_folder(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JITGATE_")}
    env.update(JITGATE_METRICS_DIR=str(tmp_path / "nope"), JITGATE_DATA_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-m", "worker", "serve-metrics", "--port", "1"],
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "is not a folder" in done.stderr
