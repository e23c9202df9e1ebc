"""A TCP fault proxy: put it between a client and a server, then cut the wire.

``down()`` drops every open connection and answers new ones with an immediate reset,
so a client sees a dead server at once instead of waiting for a TCP timeout. Upstream
is a ``(host, port)`` or a unix socket path (embedded PostgreSQL listens only on one);
the proxy itself always listens on 127.0.0.1, so a client needs nothing but a port.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
import time
from types import TracebackType
from urllib.parse import quote, urlencode

from psycopg.conninfo import conninfo_to_dict

__all__ = ["FaultProxy", "Upstream", "proxied_pg_url", "upstream_of"]

Upstream = tuple[str, int] | str | os.PathLike[str]
_CHUNK = 65536
# SO_LINGER {on, 0 s}: close() sends RST instead of FIN, so clients fail immediately.
_RESET = struct.pack("ii", 1, 0)


def _reset_close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
    with contextlib.suppress(OSError):
        sock.close()


class _Pair:
    """One proxied connection: client socket, upstream socket and their two pumps."""

    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        self.client = client
        self.server = server
        self._lock = threading.Lock()
        self._pumps_left = 2

    def kill(self) -> None:
        # shutdown() (not close) wakes pump threads blocked in recv() on these sockets;
        # the sockets are closed by the last pump to finish, so no fd is reused under it.
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def pump_done(self, *, reset: bool) -> bool:
        """Called by each pump on exit; the second one closes. True when closed."""
        with self._lock:
            self._pumps_left -= 1
            if self._pumps_left:
                return False
        if reset:
            _reset_close(self.client)
        else:
            with contextlib.suppress(OSError):
                self.client.close()
        with contextlib.suppress(OSError):
            self.server.close()
        return True


class FaultProxy:
    """Threaded TCP forwarder 127.0.0.1:<port> → upstream, with ``down()`` / ``up()``."""

    def __init__(self, upstream: Upstream, *, connect_timeout: float = 2.0) -> None:
        self._upstream: tuple[str, int] | str = (
            upstream if isinstance(upstream, tuple) else os.fspath(upstream)
        )
        self._connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._pairs: set[_Pair] = set()
        self._up = True
        self._stopped = False
        # Slow or frozen wire (T06): each forwarded chunk waits ``latency`` seconds and,
        # while paused, until resume(). Connections stay open; nothing times out here.
        self.latency = 0.0
        self._flowing = threading.Event()
        self._flowing.set()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        # A short accept timeout lets stop() end the loop: closing a socket does not
        # wake a thread blocked in accept() on Linux.
        self._listener.settimeout(0.05)
        self._thread = threading.Thread(target=self._accept_loop, daemon=True,
                                        name=f"fault-proxy-{self.port}")
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    @property
    def is_up(self) -> bool:
        return self._up

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._pairs)

    @property
    def is_paused(self) -> bool:
        return not self._flowing.is_set()

    def pause(self) -> None:
        """Freeze the wire: connections stay open, but no byte is forwarded (either
        way) until resume(). A client without a read timeout waits indefinitely."""
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def down(self) -> None:
        """Drop every open connection; new ones are reset as soon as they arrive."""
        with self._lock:
            self._up = False
            pairs = list(self._pairs)
        self._flowing.set()  # frozen pumps must wake up to notice the drop
        for pair in pairs:
            pair.kill()

    def up(self) -> None:
        with self._lock:
            self._up = True

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
        self.down()
        self._thread.join(timeout=5)
        deadline = time.monotonic() + 5
        while self.connections and time.monotonic() < deadline:
            time.sleep(0.01)  # pumps close their sockets as they notice the shutdown
        with contextlib.suppress(OSError):
            self._listener.close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else "up" if self._up else "down"
        return f"FaultProxy(127.0.0.1:{self.port} -> {self._upstream!r}, {state})"

    # ------------------------------------------------------------------ internals

    def _accept_loop(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)  # accepted sockets inherit the listener's timeout
            if not self._up:
                _reset_close(client)
                continue
            # Connecting upstream off the accept thread: a slow upstream must not delay
            # resets of other connections while down.
            threading.Thread(target=self._open, args=(client,), daemon=True).start()

    def _connect_upstream(self) -> socket.socket:
        if isinstance(self._upstream, tuple):
            return socket.create_connection(self._upstream, timeout=self._connect_timeout)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self._connect_timeout)
            sock.connect(self._upstream)
        except OSError:
            sock.close()
            raise
        return sock

    def _open(self, client: socket.socket) -> None:
        try:
            server = self._connect_upstream()
        except OSError:
            _reset_close(client)  # upstream is really down: look the same to the client
            return
        server.settimeout(None)
        pair = _Pair(client, server)
        with self._lock:
            # down() may have run while we were connecting: it must win.
            if not self._up or self._stopped:
                accepted = False
            else:
                self._pairs.add(pair)
                accepted = True
        if not accepted:
            _reset_close(client)
            server.close()
            return
        for src, dst in ((client, server), (server, client)):
            threading.Thread(target=self._pump, args=(pair, src, dst), daemon=True).start()

    def _pump(self, pair: _Pair, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(_CHUNK)
                if not data:
                    break
                if self.latency:
                    time.sleep(self.latency)
                self._flowing.wait()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            pair.kill()  # either side ending ends the connection: no half-open pairs
            # While down, reset the client so it cannot mistake the drop for a clean close.
            if pair.pump_done(reset=not self._up):
                with self._lock:
                    self._pairs.discard(pair)


# ---------------------------------------------------------------------- PostgreSQL URLs


def _conninfo(pg_url: str) -> dict[str, str]:
    info = {k: str(v) for k, v in conninfo_to_dict(pg_url).items() if v is not None}
    host = info.get("host", "")
    if not host or "," in host or "," in info.get("port", ""):
        raise ValueError("pg_url must name exactly one host or socket folder")
    return info


def upstream_of(pg_url: str) -> tuple[str, int] | str:
    """Where ``pg_url`` connects: ``(host, port)``, or the unix socket file
    ``<dir>/.s.PGSQL.<port>`` when the host is a socket folder."""
    info = _conninfo(pg_url)
    host = info["host"]
    port = int(info.get("port") or 5432)
    if host.startswith("/"):
        return f"{host.rstrip('/')}/.s.PGSQL.{port}"
    return (info.get("hostaddr") or host, port)


def proxied_pg_url(pg_url: str, proxy: FaultProxy) -> str:
    """``pg_url`` rewritten to connect through ``proxy`` (TCP on 127.0.0.1); user,
    password, database and the other parameters are kept."""
    info = _conninfo(pg_url)
    for key in ("host", "hostaddr", "port"):
        info.pop(key, None)
    user = quote(info.pop("user", ""), safe="")
    password = info.pop("password", "")
    dbname = quote(info.pop("dbname", ""), safe="")
    auth = f"{user}:{quote(password, safe='')}@" if password else f"{user}@" if user else ""
    query = f"?{urlencode(info)}" if info else ""
    return f"postgresql://{auth}127.0.0.1:{proxy.port}/{dbname}{query}"
