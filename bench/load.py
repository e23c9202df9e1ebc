"""Keep-alive HTTP/1.1 load generator on raw asyncio streams (run as its own process).

Modes:
  closed  each of ``--conns`` connections sends back-to-back for ``--duration`` s after
          ``--warmup`` s; counts responses completed inside the window (saturation).
  open    requests scheduled at ``--rate``/s on an absolute clock; latency is measured
          from the *scheduled* time, so queueing behind a slow server is counted.
  list    sends the deliveries of ``--items`` (JSON lines of ``{"body", "headers"}``) once
          each, back-to-back (``--rate 0``) or paced; reports each item's send time.

Single-body modes sign one body once and vary only ``X-Atlassian-Webhook-Identifier``
(the signature covers the body, the dedupe key is the identifier): one fresh delivery
per request at almost no client cost. Prints one JSON object on stdout.
"""

# ruff: noqa: PLC0415 - the harness reads its own env and imports lazily

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
import uuid
from collections import Counter
from typing import Any


def _request(path: str, port: int, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    payload: bytes) -> int:
    writer.write(payload)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
            break
    if length:
        await reader.readexactly(length)
    return status


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, -(-len(ordered) * p // 100) - 1))
    return round(ordered[int(k)], 3)


async def _connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def closed(args: argparse.Namespace, body: bytes, headers: dict[str, str]) -> dict[str, Any]:
    run = uuid.uuid4().hex[:12]
    counter = itertools.count()
    t_start = time.perf_counter()
    w_start = t_start + args.warmup
    w_end = w_start + args.duration
    lat: list[float] = []
    statuses: Counter[int] = Counter()

    async def conn_loop() -> None:
        reader, writer = await _connect(args.port)
        try:
            while True:
                now = time.perf_counter()
                if now >= w_end:
                    return
                hdrs = {**headers, "X-Atlassian-Webhook-Identifier": f"{run}-{next(counter)}"}
                status = await _exchange(reader, writer, _request(args.path, args.port, body, hdrs))
                done = time.perf_counter()
                if w_start <= now and done <= w_end:
                    statuses[status] += 1
                    lat.append((done - now) * 1000)
        finally:
            writer.close()

    await asyncio.gather(*(conn_loop() for _ in range(args.conns)))
    ok = statuses.get(202, 0)
    return {"mode": "closed", "conns": args.conns, "window_s": args.duration,
            "sent": sum(statuses.values()), "statuses": dict(statuses),
            "accepted_per_s": round(ok / args.duration, 1),
            "p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99), "max_ms": _pct(lat, 100)}


async def paced(args: argparse.Namespace, items: list[tuple[bytes, dict[str, str]]] | None,
                body: bytes, headers: dict[str, str]) -> dict[str, Any]:
    """Open loop (``--rate`` > 0) or back-to-back over a list (``--rate`` 0)."""
    run = uuid.uuid4().hex[:12]
    total = len(items) if items is not None else int(args.rate * (args.warmup + args.duration))
    warm = 0 if items is not None else int(args.rate * args.warmup)
    counter = itertools.count()
    lat: list[float] = []
    statuses: Counter[int] = Counter()
    sent_wall: list[float | None] = [None] * total
    status_of: list[int | None] = [None] * total
    t0 = time.perf_counter()
    wall0 = time.time()

    async def conn_loop() -> None:
        reader, writer = await _connect(args.port)
        try:
            while True:
                i = next(counter)
                if i >= total:
                    return
                if args.rate > 0:
                    due = t0 + i / args.rate
                    delay = due - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                else:
                    due = time.perf_counter()
                if items is not None:
                    b, hdrs = items[i]
                else:
                    b = body
                    hdrs = {**headers, "X-Atlassian-Webhook-Identifier": f"{run}-{i}"}
                sent_wall[i] = wall0 + (due - t0)
                status = await _exchange(reader, writer, _request(args.path, args.port, b, hdrs))
                status_of[i] = status
                if i >= warm:
                    statuses[status] += 1
                    lat.append((time.perf_counter() - due) * 1000)
        finally:
            writer.close()

    await asyncio.gather(*(conn_loop() for _ in range(args.conns)))
    elapsed = time.perf_counter() - t0
    ok = statuses.get(202, 0)
    out: dict[str, Any] = {
        "mode": "open" if args.rate > 0 else "list", "conns": args.conns, "rate": args.rate,
        "sent": sum(statuses.values()), "statuses": dict(statuses),
        "elapsed_s": round(elapsed, 3),
        "accepted_per_s": round(ok / max(1e-9, elapsed - (args.warmup if items is None else 0)),
                                1),
        "p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99), "max_ms": _pct(lat, 100),
    }
    if items is not None:
        out["sent_wall"] = sent_wall
        out["status_of"] = status_of
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/webhooks/jira")
    parser.add_argument("--mode", choices=["closed", "open", "list"], required=True)
    parser.add_argument("--conns", type=int, default=16)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--body", help="JSON file {body, headers} for closed/open")
    parser.add_argument("--items", help="JSON lines {body, headers} for list")
    args = parser.parse_args()
    body, headers = b"", {}
    items: list[tuple[bytes, dict[str, str]]] | None = None
    if args.body:
        with open(args.body) as fh:  # noqa: PTH123
            spec = json.load(fh)
        body, headers = spec["body"].encode(), dict(spec["headers"])
    if args.items:
        with open(args.items) as fh:  # noqa: PTH123
            items = [(d["body"].encode(), dict(d["headers"])) for d in map(json.loads, fh)]
    try:
        from uvloop import run as loop_run
    except ImportError:
        loop_run = asyncio.run
    if args.mode == "closed":
        result = loop_run(closed(args, body, headers))
    else:
        result = loop_run(paced(args, items, body, headers))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
