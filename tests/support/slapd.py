"""A private OpenLDAP ``slapd`` for the tests: its own temp folder, config and port.

One server per test process (per xdist worker), started on first use and stopped when
pytest ends (``config.add_cleanup``), so the contract harness (called from a fixture it
does not own) and the LDAP test module share it without a conftest of their own.
The directory holds ``dc=jitgate,dc=test`` with ``ou=people`` and ``ou=groups``, and a
read-only service account ``uid=reader,ou=system`` for permission tests.

Without a ``slapd`` binary the callers skip with the reason: CI installs the Debian
package (``.ci/run``); a developer can ``apt-get install slapd ldap-utils``.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from ldap3 import Connection, Server

__all__ = [
    "ADMIN_DN",
    "ADMIN_PASSWORD",
    "GROUP_BASE",
    "PLACEHOLDER_DN",
    "READER_DN",
    "READER_PASSWORD",
    "SUFFIX",
    "USER_BASE",
    "SlapdServer",
    "free_port",
    "slapd_for",
]

SUFFIX = "dc=jitgate,dc=test"
ADMIN_DN = f"cn=admin,{SUFFIX}"
ADMIN_PASSWORD = "admin-secret-Zq81"
USER_BASE = f"ou=people,{SUFFIX}"
GROUP_BASE = f"ou=groups,{SUFFIX}"
READER_DN = f"uid=reader,ou=system,{SUFFIX}"
READER_PASSWORD = "reader-secret-Kp44"
# groupOfNames needs one member; this DN names no entry and is never a principal.
PLACEHOLDER_DN = f"cn=empty-group-placeholder,{SUFFIX}"

_SLAPD_CANDIDATES = ("/usr/sbin/slapd", "/usr/local/libexec/slapd", "/usr/libexec/slapd")
_SCHEMA_DIR = Path("/etc/ldap/schema")
_MODULE_DIRS = ("/usr/lib/ldap", "/usr/lib/openldap", "/usr/lib64/openldap")
_KEY = pytest.StashKey["SlapdServer | str"]()

# rootdn bypasses ACLs; ordinary accounts read everything but userPassword and write
# nothing, which is what the permission_denied test needs.
_CONFIG = """\
{includes}
pidfile {folder}/slapd.pid
argsfile {folder}/slapd.args
{modules}
database mdb
maxsize 67108864
suffix "{suffix}"
rootdn "{admin}"
rootpw {password}
directory {folder}/db
index objectClass,uid,cn,memberUid eq
access to attrs=userPassword by self write by anonymous auth by * none
access to * by users read by * none
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _slapd_binary() -> str | None:
    for candidate in (*_SLAPD_CANDIDATES, shutil.which("slapd")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


@dataclass
class SlapdServer:
    url: str
    folder: Path
    process: subprocess.Popen[bytes]

    @classmethod
    def start(cls, binary: str) -> SlapdServer:
        folder = Path(tempfile.mkdtemp(prefix="jg-slapd-"))
        (folder / "db").mkdir()
        includes = "\n".join(
            f"include {_SCHEMA_DIR / name}.schema"
            for name in ("core", "cosine", "inetorgperson", "nis")
        )
        # Debian builds back_mdb as a module; other builds link it in statically.
        module_dir = next((d for d in _MODULE_DIRS if Path(d, "back_mdb.la").exists()), None)
        modules = f"modulepath {module_dir}\nmoduleload back_mdb" if module_dir else ""
        conf = folder / "slapd.conf"
        conf.write_text(
            _CONFIG.format(
                includes=includes, modules=modules, folder=folder, suffix=SUFFIX,
                admin=ADMIN_DN, password=ADMIN_PASSWORD,
            )
        )
        port = free_port()
        url = f"ldap://127.0.0.1:{port}"
        log = (folder / "slapd.log").open("wb")
        # -d 0: stay in the foreground (we own the process) without debug output.
        process = subprocess.Popen(
            [binary, "-h", f"{url}/", "-f", str(conf), "-d", "0"],
            stdout=log, stderr=subprocess.STDOUT,
        )
        server = cls(url=url, folder=folder, process=process)
        try:
            server._wait_ready(port)
            server._load_base()
        except BaseException:
            server.stop(keep_files=True)
            raise
        return server

    def _wait_ready(self, port: int) -> None:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = (self.folder / "slapd.log").read_text(errors="replace")
                raise RuntimeError(f"slapd exited with {self.process.returncode}: {log[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                return
            time.sleep(0.05)
        raise RuntimeError(f"slapd did not listen on {self.url} within 15 s")

    def admin(self) -> Connection:
        """A bound rootdn connection; the caller unbinds it."""
        conn = Connection(
            Server(self.url, connect_timeout=5), user=ADMIN_DN, password=ADMIN_PASSWORD,
            raise_exceptions=True, receive_timeout=10,
        )
        conn.bind()
        return conn

    def _load_base(self) -> None:
        conn = self.admin()
        try:
            conn.add(SUFFIX, ["dcObject", "organization"], {"dc": "jitgate", "o": "jitgate"})
            for ou in ("people", "groups", "system"):
                conn.add(f"ou={ou},{SUFFIX}", ["organizationalUnit"], {"ou": ou})
            conn.add(
                READER_DN, ["inetOrgPerson"],
                {"uid": "reader", "cn": "reader", "sn": "reader", "userPassword": READER_PASSWORD},
            )
        finally:
            conn.unbind()

    def stop(self, *, keep_files: bool = False) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if not keep_files:
            shutil.rmtree(self.folder, ignore_errors=True)


def slapd_for(config: pytest.Config) -> SlapdServer:
    """The process's slapd, started on first call; skips when slapd is not installed."""
    known = config.stash.get(_KEY, None)
    if isinstance(known, str):
        pytest.skip(known)
    if known is not None:
        return known
    binary = _slapd_binary()
    if binary is None or not _SCHEMA_DIR.is_dir():
        reason = (
            "OpenLDAP slapd is not installed (apt-get install slapd ldap-utils; "
            ".ci/run installs it)"
        )
        config.stash[_KEY] = reason
        pytest.skip(reason)
    server = SlapdServer.start(binary)
    config.stash[_KEY] = server
    config.add_cleanup(server.stop)
    return server
