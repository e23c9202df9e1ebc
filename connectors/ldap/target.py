"""LDAP target: a grant is membership of a user entry in a group entry.

A principal is the value of ``user_attribute`` (``uid``) of exactly one entry under
``user_base``; a role is the group ``<group_attribute>=<role>,<group_base>``. Names reach
the directory only escaped: filter values per RFC 4515 (``escape_filter_chars``), RDN
values per RFC 4514 (``escape_rdn``). LDAP matching is looser than string equality
(case-insensitive, insignificant spaces), so every lookup is confirmed against the exact
string afterwards; a name that matches some other entry only loosely, or matches more than
one entry, fails closed with a ``PermanentError`` and never touches that entry.

Membership attribute:

- ``member`` (groupOfNames, the default) or any other DN-valued attribute
  (``uniqueMember``): values are user DNs, as the directory spells them.
- ``memberUid`` (posixGroup): values are user names (``user_attribute`` values).

groupOfNames requires at least one ``member``, so removing the last one is refused by the
server (objectClassViolation). With ``empty_member`` set (a DN that names no user, e.g.
``cn=nobody,dc=example,dc=org``), the revoke adds that placeholder and removes the user
in one atomic modify; without it the revoke fails with ``PermanentError(last_member)``
and the membership stays, visibly, rather than silently. ``members()`` never reports the
placeholder.

Calls are idempotent: grant answers ``ALREADY_PRESENT`` for an existing membership (a
compare first; ``attributeOrValueExists`` from a racing writer means the same), revoke
``ALREADY_ABSENT`` for a missing one (``noSuchAttribute``), as reliability §2.3 advises.
Membership has no native expiry in LDAP; revocation is jitgate's job alone.
"""

from __future__ import annotations

import contextlib
import math
import re
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Final, TypeVar
from urllib.parse import urlsplit

from ldap3 import BASE, MODIFY_ADD, MODIFY_DELETE, NONE, SUBTREE, Connection, Server, Tls
from ldap3.core import exceptions as ldap_exc
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import escape_rdn, parse_dn
from pydantic import BaseModel, Field, FilePath, SecretStr, field_validator, model_validator

from connectors.base import Outcome
from connectors.errors import ConnectorError, PermanentError, TransientError

__all__ = ["LDAPTarget", "LDAPTargetConfig"]

_T = TypeVar("_T")

# An attribute description without options: a name (RFC 4512 keystring) or an OID.
_ATTRIBUTE: Final = re.compile(r"^(?:[A-Za-z][A-Za-z0-9-]*|[0-9]+(?:\.[0-9]+)+)$")
# Control characters have no business in a user or group name; NUL also breaks escaping.
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
_MAX_NAME: Final = 256
_HEX_PAIR: Final = re.compile(r"\\([0-9A-Fa-f]{2})")

_DENIED: Final = (
    ldap_exc.LDAPInvalidCredentialsResult,
    ldap_exc.LDAPInsufficientAccessRightsResult,
    ldap_exc.LDAPInappropriateAuthenticationResult,
    ldap_exc.LDAPStrongerAuthRequiredResult,
    ldap_exc.LDAPConfidentialityRequiredResult,
    ldap_exc.LDAPAuthorizationDeniedResult,
)
_BUSY: Final = (
    ldap_exc.LDAPBusyResult,
    ldap_exc.LDAPUnavailableResult,
    ldap_exc.LDAPTimeLimitExceededResult,
)
# The wire failed: the connection is unusable and the call may be retried on a new one.
_WIRE: Final = (ldap_exc.LDAPCommunicationError, ldap_exc.LDAPResponseTimeoutError, OSError)


def _is_dn(value: str) -> bool:
    try:
        parse_dn(value)
    except ldap_exc.LDAPException:
        return False
    return bool(value.strip())


class LDAPTargetConfig(BaseModel, frozen=True, extra="forbid", hide_input_in_errors=True):
    """Options of a ``type: ldap`` target. ``hide_input_in_errors`` keeps the bind
    password out of ``ValidationError`` text."""

    url: str
    bind_dn: str
    bind_password: SecretStr
    user_base: str
    user_attribute: str = "uid"
    group_base: str
    group_attribute: str = "cn"
    member_attribute: str = "member"
    # groupOfNames cannot be empty: the DN kept in a group while it has no real member.
    empty_member: str | None = None
    connect_timeout: float = Field(default=5, gt=0)
    receive_timeout: float = Field(default=10, gt=0)
    start_tls: bool = False
    # CA bundle for ldaps/StartTLS; the system store when unset. Certificates are always
    # verified (ldap3's own default is not to).
    ca_file: FilePath | None = None

    @field_validator("url")
    @classmethod
    def _url_is_ldap(cls, value: str) -> str:
        parts = urlsplit(value)
        try:
            port = parts.port
        except ValueError:
            raise ValueError("port must be a number") from None
        if parts.scheme not in {"ldap", "ldaps"} or not parts.hostname:
            raise ValueError("must be ldap://host[:port] or ldaps://host[:port]")
        if parts.username or parts.password or parts.path.strip("/") or parts.query:
            # Credentials belong in bind_dn/bind_password, not in a URL that gets logged.
            raise ValueError("must not carry credentials, a path or a query")
        del port
        return value

    @field_validator("bind_password")
    @classmethod
    def _password_not_empty(cls, value: SecretStr) -> SecretStr:
        # An empty password makes a simple bind anonymous (RFC 4513 §5.1.2): it would
        # "succeed" and then fail on every write with a misleading error.
        if not value.get_secret_value():
            raise ValueError("must not be empty (an empty simple bind is anonymous)")
        return value

    @field_validator("bind_dn", "user_base", "group_base", "empty_member")
    @classmethod
    def _valid_dn(cls, value: str | None) -> str | None:
        if value is not None and not _is_dn(value):
            raise ValueError("not a valid distinguished name")
        return value

    @field_validator("user_attribute", "group_attribute", "member_attribute")
    @classmethod
    def _valid_attribute(cls, value: str) -> str:
        if not _ATTRIBUTE.match(value):
            raise ValueError("not an LDAP attribute name")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> LDAPTargetConfig:
        if self.start_tls and urlsplit(self.url).scheme == "ldaps":
            raise ValueError("start_tls is for ldap:// URLs; ldaps:// is already TLS")
        if self.empty_member is not None and not self.member_is_dn:
            raise ValueError("empty_member applies to DN-valued member attributes only")
        return self

    @property
    def member_is_dn(self) -> bool:
        """False for posixGroup's ``memberUid``, whose values are user names."""
        return self.member_attribute.casefold() != "memberuid"


def _check_name(value: str, what: str) -> None:
    if not value.strip() or len(value) > _MAX_NAME or _CONTROL.search(value):
        raise PermanentError(
            f"{what} name is empty, blank, longer than {_MAX_NAME} characters or contains "
            "control characters",
            code="invalid_identifier",
        )


def _filter_value(value: str) -> str:
    """RFC 4515 assertion value. ldap3's filter parser strips surrounding spaces, which
    would assert a different name, so those are hex-escaped too."""
    escaped = str(escape_filter_chars(value))
    core = escaped.strip(" ")
    lead = len(escaped) - len(escaped.lstrip(" "))
    trail = len(escaped) - len(escaped.rstrip(" "))
    return "\\20" * lead + core + "\\20" * trail


def _unescape_value(value: str) -> str | None:
    """An RFC 4514 attribute value as text; None for the ``#hex`` BER form."""
    if value.startswith("#"):
        return None
    raw = bytearray()
    i = 0
    while i < len(value):
        char = value[i]
        if char == "\\" and i + 1 < len(value):
            pair = _HEX_PAIR.match(value, i)
            if pair:
                raw.append(int(pair.group(1), 16))
                i += 3
                continue
            char = value[i + 1]
            i += 1
        raw.extend(char.encode())
        i += 1
    return raw.decode(errors="replace")


@dataclass(frozen=True)
class _Dn:
    """A parsed DN, compared roughly as the directory would (case- and space-insensitive,
    escapes resolved): good enough to recognise the placeholder and the user subtree."""

    avas: tuple[tuple[str, str, str], ...]  # (type, raw value, separator after it)

    @classmethod
    def parse(cls, dn: str) -> _Dn | None:
        try:
            parts = parse_dn(dn, escape=False, strip=False)
        except ldap_exc.LDAPException:
            return None
        return cls(tuple((str(t).strip(), str(v), str(s)) for t, v, s in parts))

    @property
    def key(self) -> tuple[tuple[str, str], ...]:
        return tuple(
            (t.casefold(), " ".join((_unescape_value(v) or v.casefold()).casefold().split()))
            for t, v, _ in self.avas
        )

    def is_under(self, base: _Dn) -> bool:
        size = len(base.avas)
        if len(self.avas) <= size or self.key[-size:] != base.key:
            return False
        return self.avas[-size - 1][2] == ","  # the suffix starts at an RDN boundary

    def single_rdn(self) -> tuple[str, str] | None:
        """The first RDN's (type, raw value) when it has a single AVA."""
        if not self.avas or self.avas[0][2] == "+":
            return None
        return self.avas[0][0], self.avas[0][1]


@dataclass(frozen=True)
class _User:
    dn: str | None  # None: no entry carries exactly this name
    loose_matches: int  # entries the directory's own (looser) matching returned


def _camel_to_snake(name: str) -> str:
    return str(re.sub(r"(?<!^)(?=[A-Z])", "_", name)).lower()


class LDAPTarget:
    """Grants LDAP group memberships. One lazily opened, bound connection per instance,
    serialised by a lock and reopened after a connection failure."""

    kind: ClassVar[str] = "ldap"

    def __init__(self, config: LDAPTargetConfig, *, name: str) -> None:
        self.name = name
        self._config = config
        self._lock = threading.Lock()
        self._conn: Any = None  # ldap3.Connection (untyped library)
        self._user_base = _Dn.parse(config.user_base)
        self._placeholder = _Dn.parse(config.empty_member) if config.empty_member else None

    @classmethod
    def from_options(cls, name: str, options: dict[str, Any]) -> LDAPTarget:
        return cls(LDAPTargetConfig.model_validate(options), name=name)

    def __repr__(self) -> str:
        return f"LDAPTarget(name={self.name!r})"

    # -- TargetConnector -------------------------------------------------------------

    def grant(self, *, principal: str, role: str, expires_at: datetime) -> Outcome:
        # expires_at is unused: LDAP group membership has no expiry to set.
        _check_name(principal, "principal")
        _check_name(role, "role")
        return self._run("grant", lambda conn: self._grant(conn, principal, role))

    def _grant(self, conn: Any, principal: str, role: str) -> Outcome:
        group = self._group(conn, role)
        user = self._find_user(conn, principal)
        if user.loose_matches > 1:
            raise self._ambiguous(principal)
        if user.dn is None:
            raise PermanentError(
                f"ldap target {self.name!r}: no entry under user_base has "
                f"{self._config.user_attribute}={principal!r} exactly",
                code="principal_missing",
            )
        value = user.dn if self._config.member_is_dn else principal
        if self._has_member(conn, group, principal, value):
            return Outcome.ALREADY_PRESENT
        try:
            conn.modify(group, {self._config.member_attribute: [(MODIFY_ADD, [value])]})
        except ldap_exc.LDAPAttributeOrValueExistsResult:
            return Outcome.ALREADY_PRESENT  # a concurrent writer got there first
        return Outcome.APPLIED

    def revoke(self, *, principal: str, role: str) -> Outcome:
        _check_name(principal, "principal")
        _check_name(role, "role")
        return self._run("revoke", lambda conn: self._revoke(conn, principal, role))

    def _revoke(self, conn: Any, principal: str, role: str) -> Outcome:
        try:
            group = self._group(conn, role)
        except PermanentError as exc:
            if exc.code == "role_missing":
                return Outcome.ALREADY_ABSENT  # no group, no membership
            raise
        cfg = self._config
        if cfg.member_is_dn:
            user = self._find_user(conn, principal)
            if user.loose_matches > 1:
                # Revocation must not guess between entries; this stays visible.
                raise self._ambiguous(principal)
            if user.dn is not None:
                value = user.dn
            elif user.loose_matches == 0:
                # The entry is gone, but its DN may still sit in the group and would come
                # back to life with a recreated account: remove the conventional DN.
                value = f"{cfg.user_attribute}={escape_rdn(principal)},{cfg.user_base}"
            else:
                return Outcome.ALREADY_ABSENT  # only a loosely equal, different name exists
        else:
            value = principal  # memberUid holds names; no entry needed to remove one
        if not self._has_member(conn, group, principal, value):
            return Outcome.ALREADY_ABSENT
        attribute = cfg.member_attribute
        try:
            conn.modify(group, {attribute: [(MODIFY_DELETE, [value])]})
        except ldap_exc.LDAPNoSuchAttributeResult:
            return Outcome.ALREADY_ABSENT  # removed concurrently
        except ldap_exc.LDAPObjectClassViolationResult:
            # The last member of a groupOfNames (its schema requires one).
            if cfg.empty_member is None:
                raise PermanentError(
                    f"ldap target {self.name!r}: {principal!r} is the last member of "
                    f"{role!r} and the group's schema requires one; set empty_member",
                    code="last_member",
                ) from None
            # One modify, applied atomically: the group is never without a member.
            conn.modify(
                group,
                {attribute: [(MODIFY_ADD, [cfg.empty_member]), (MODIFY_DELETE, [value])]},
            )
        return Outcome.APPLIED

    def members(self, *, role: str) -> frozenset[str]:
        """The principals in ``role``: ``user_attribute`` values of member DNs under
        ``user_base`` (from the DN's RDN when it is ``user_attribute=...``, else read from
        the entry), or the ``memberUid`` values. The placeholder and DNs outside
        ``user_base`` (which can never be principals) are left out."""
        _check_name(role, "role")
        return self._run("members", lambda conn: self._members(conn, role))

    def _members(self, conn: Any, role: str) -> frozenset[str]:
        group = self._group(conn, role)
        values = self._read(conn, group, self._config.member_attribute)
        if not self._config.member_is_dn:
            return frozenset(values)
        names: set[str] = set()
        for dn in values:
            parsed = _Dn.parse(dn)
            if parsed is None or self._user_base is None or not parsed.is_under(self._user_base):
                continue
            if self._placeholder is not None and parsed.key == self._placeholder.key:
                continue
            rdn = parsed.single_rdn()
            text = _unescape_value(rdn[1]) if rdn else None
            if rdn and rdn[0].casefold() == self._config.user_attribute.casefold() and text:
                names.add(text)
                continue
            with contextlib.suppress(ldap_exc.LDAPNoSuchObjectResult):  # a dangling DN
                found = self._read(conn, dn, self._config.user_attribute)
                if len(found) == 1:
                    names.add(found[0])
        return frozenset(names)

    def check(self) -> None:
        """Bind and read ``group_base``: proves reachability, credentials and the base."""
        self._run("check", lambda conn: self._read(conn, self._config.group_base, "objectClass"))

    def close(self) -> None:
        with self._lock:
            self._discard()

    # -- directory reads -------------------------------------------------------------

    def _group(self, conn: Any, role: str) -> str:
        """The group's DN; ``role_missing`` unless it exists and carries exactly ``role``
        (DN matching would also accept ``Admins`` or `` admins`` for ``admins``)."""
        cfg = self._config
        dn = f"{cfg.group_attribute}={escape_rdn(role)},{cfg.group_base}"
        try:
            names = self._read(conn, dn, cfg.group_attribute)
        except ldap_exc.LDAPNoSuchObjectResult:
            names = []
        if role not in names:
            raise PermanentError(
                f"ldap target {self.name!r}: role {role!r} does not exist "
                f"(no group {cfg.group_attribute}={role!r} under group_base)",
                code="role_missing",
            )
        return dn

    def _find_user(self, conn: Any, principal: str) -> _User:
        cfg = self._config
        conn.search(
            cfg.user_base,
            f"({cfg.user_attribute}={_filter_value(principal)})",
            search_scope=SUBTREE,
            attributes=[cfg.user_attribute],
            size_limit=2,  # two are enough to know it is ambiguous
        )
        entries = [r for r in conn.response or () if r.get("type") == "searchResEntry"]
        exact = [
            str(r["dn"])
            for r in entries
            if principal in _strings(r.get("attributes", {}).get(cfg.user_attribute))
        ]
        return _User(dn=exact[0] if len(exact) == 1 else None, loose_matches=len(entries))

    def _has_member(self, conn: Any, group: str, principal: str, value: str) -> bool:
        attribute = self._config.member_attribute
        if not self._config.member_is_dn:
            # memberUid matching ignores surrounding spaces; only the exact name counts.
            return principal in self._read(conn, group, attribute)
        # DNs: the server's distinguishedNameMatch, not our string comparison.
        try:
            return bool(conn.compare(group, attribute, value))
        except ldap_exc.LDAPNoSuchAttributeResult:
            return False  # the group has no value of the attribute at all

    @staticmethod
    def _read(conn: Any, dn: str, attribute: str) -> list[str]:
        conn.search(dn, "(objectClass=*)", search_scope=BASE, attributes=[attribute])
        for entry in conn.response or ():
            if entry.get("type") == "searchResEntry":
                return _strings(entry.get("attributes", {}).get(attribute))
        return []

    def _ambiguous(self, principal: str) -> PermanentError:
        return PermanentError(
            f"ldap target {self.name!r}: more than one entry under user_base matches "
            f"{self._config.user_attribute}={principal!r}; refusing to choose",
            code="ambiguous_principal",
        )

    # -- connection and error mapping ------------------------------------------------

    def _run(self, action: str, operation: Callable[[Any], _T]) -> _T:
        """Run ``operation`` on the connection under the lock, translating every driver
        error (the only place that does). A reused connection that fails on the wire
        (server idle timeout, restart) is replaced and the call tried once more; every
        operation is an idempotent "ensure", so repeating it is safe."""
        with self._lock:
            for attempt in (1, 2):
                reused = self._conn is not None
                try:
                    return operation(self._connection())
                except ConnectorError:
                    raise
                except _WIRE as exc:
                    self._discard()
                    if reused and attempt == 1:
                        continue
                    raise self._translate(exc, action) from None
                except ldap_exc.LDAPException as exc:
                    raise self._translate(exc, action) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _translate(self, exc: BaseException, action: str) -> ConnectorError:
        # Class name and result code only: ldap3 messages can quote DNs and server text.
        result = getattr(exc, "result", None)
        detail = f"{type(exc).__name__}, result {result}" if result else type(exc).__name__
        prefix = f"ldap target {self.name!r}: {action} failed ({detail})"
        if isinstance(exc, _DENIED):
            return PermanentError(
                f"{prefix}: permission denied or bad bind credentials", code="permission_denied"
            )
        if isinstance(exc, (*_WIRE, *_BUSY)):
            return TransientError(f"{prefix}: directory unavailable or timed out")
        if isinstance(exc, ldap_exc.LDAPCertificateError | ldap_exc.LDAPStartTLSError):
            return PermanentError(f"{prefix}: TLS could not be established", code="tls_error")
        if isinstance(exc, ldap_exc.LDAPOperationResult):
            description = getattr(exc, "description", None) or "error"
            return PermanentError(prefix, code=f"ldap_{_camel_to_snake(str(description))}")
        return PermanentError(prefix, code="ldap_error")

    def _connection(self) -> Any:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        self._discard()
        cfg = self._config
        parts = urlsplit(cfg.url)
        secure = parts.scheme == "ldaps"
        tls = Tls(
            validate=ssl.CERT_REQUIRED,
            ca_certs_file=str(cfg.ca_file) if cfg.ca_file else None,
            version=ssl.PROTOCOL_TLS_CLIENT,
        )
        server = Server(
            parts.hostname,
            port=parts.port or (636 if secure else 389),
            use_ssl=secure,
            tls=tls,
            get_info=NONE,  # no schema download: faster, and nothing depends on it
            connect_timeout=cfg.connect_timeout,
        )
        conn = Connection(
            server,
            user=cfg.bind_dn,
            password=cfg.bind_password.get_secret_value(),
            raise_exceptions=True,
            # ldap3 packs this into SO_RCVTIMEO as whole seconds on Linux (a float
            # raises struct.error), so it is rounded up.
            receive_timeout=math.ceil(cfg.receive_timeout),
            auto_referrals=False,  # never chase a referral to a host we were not given
            return_empty_attributes=False,
        )
        try:
            conn.open()
            if cfg.start_tls:
                conn.start_tls()
            conn.bind()
        except BaseException:
            with contextlib.suppress(Exception):
                conn.unbind()
            raise
        self._conn = conn
        return conn

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            # Unbinding a dead connection can fail; there is nothing left to release.
            with contextlib.suppress(Exception):
                conn.unbind()


def _strings(values: Any) -> list[str]:
    if values is None:
        return []
    if isinstance(values, str | bytes):
        values = [values]
    return [v.decode(errors="replace") if isinstance(v, bytes) else str(v) for v in values]
