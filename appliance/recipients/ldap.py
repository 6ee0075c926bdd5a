"""Method ldap: the recipient exists when the filter finds an entry (Active Directory,
OpenLDAP), looked up with ldap3 in worker threads so the event loop never waits on LDAP.

Every value put into the filter template is escaped (RFC 4515, ldap3's
escape_filter_chars): an address such as ``*)(uid=*`` matches literally, it cannot
widen the search. Bound connections are kept (one lookup at a time each) and a broken
one is replaced; servers are tried in the configured order."""

from __future__ import annotations

import asyncio
import logging
import math
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import ldap3
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars

from appliance.recipients.result import Existence, Lookup, VerifierUnavailable

log = logging.getLogger("postwall.recipients")

SUCCESS = 0
SIZE_LIMIT_EXCEEDED = 4  # more than one entry matched: the address exists all the same


def fill_filter(template: str, address: str) -> str:
    """The search filter for `address`, each part escaped."""
    local, _, domain = address.rpartition("@")
    return template.format(
        address=escape_filter_chars(address),
        local=escape_filter_chars(local),
        domain=escape_filter_chars(domain),
    )


def read_password_file(path: Path) -> str:
    """The bind password: the file's first line. Refused unless owner-only."""
    try:
        mode = path.stat().st_mode
        if mode & 0o077:
            raise ValueError(
                f"ldap bind_password_file {path} is readable by others (mode "
                f"{mode & 0o777:04o}): chmod 600 it"
            )
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"ldap bind_password_file {path}: {exc.strerror}") from None
    password = text.splitlines()[0] if text else ""
    if not password:
        raise ValueError(f"ldap bind_password_file {path} is empty")
    return password


@dataclass(frozen=True, slots=True)
class LDAPTarget:
    servers: tuple[str, ...]
    bind_dn: str | None
    password: str | None
    base_dn: str
    template: str
    ca_file: str | None
    timeout: float
    pool_size: int

    @property
    def name(self) -> str:
        return ",".join(self.servers)

    def __repr__(self) -> str:  # never the password
        return f"LDAPTarget({self.name}, bind_dn={self.bind_dn!r}, base_dn={self.base_dn!r})"


class LDAPClient:
    """A pool of bound connections to one directory, used from a thread pool."""

    def __init__(self, target: LDAPTarget) -> None:
        self.target = target
        self._executor = ThreadPoolExecutor(
            max_workers=target.pool_size, thread_name_prefix="ldap-lookup"
        )
        self._idle: list[ldap3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        self.connects = 0
        self.last_used = time.monotonic()

    def _server(self, url: str) -> ldap3.Server:
        tls = None
        if url.lower().startswith("ldaps://"):
            tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=self.target.ca_file)
        return ldap3.Server(url, connect_timeout=self.target.timeout, tls=tls,
                            get_info=ldap3.NONE)

    # -- in a worker thread -----------------------------------------------------------

    def _connect(self) -> ldap3.Connection:
        target = self.target
        failures = []
        # Fresh Server objects each time: ldap3 remembers a failed address and skips it for
        # minutes, which would outlast the restart of a directory server.
        for server in [self._server(url) for url in target.servers]:
            self.connects += 1
            connection = ldap3.Connection(
                server, user=target.bind_dn, password=target.password,
                authentication=ldap3.SIMPLE if target.bind_dn else ldap3.ANONYMOUS,
                client_strategy=ldap3.SYNC, read_only=True, auto_referrals=False,
                receive_timeout=math.ceil(target.timeout), raise_exceptions=False,
                auto_bind=ldap3.AUTO_BIND_NONE,
            )
            try:
                connection.open()
                if connection.bind():
                    return connection
                result = connection.result or {}
                failures.append(f"{server.host}: bind as {target.bind_dn or 'anonymous'} "
                                f"refused ({result.get('description')}: "
                                f"{result.get('message') or 'no message'})")
            except LDAPException as exc:
                failures.append(f"{server.host}: {type(exc).__name__}: {exc}")
            _unbind(connection)
        raise VerifierUnavailable(f"ldap {target.name}: " + "; ".join(failures))

    def _search_blocking(self, address: str) -> Lookup:
        with self._lock:
            connection = self._idle.pop() if self._idle else None
        pooled = connection is not None
        if connection is None:
            connection = self._connect()
        try:
            try:
                lookup = self._search(connection, address)
            except LDAPException:
                if not pooled:
                    raise
                _unbind(connection)  # the server dropped an idle connection: reconnect
                connection = self._connect()
                lookup = self._search(connection, address)
        except LDAPException as exc:
            _unbind(connection)
            raise VerifierUnavailable(
                f"ldap {self.target.name}: {type(exc).__name__}: {exc}"
            ) from None
        except BaseException:
            _unbind(connection)
            raise
        with self._lock:
            if not self._closed and len(self._idle) < self.target.pool_size:
                self._idle.append(connection)
                connection = None
        if connection is not None:
            _unbind(connection)
        return lookup

    def _search(self, connection: ldap3.Connection, address: str) -> Lookup:
        target = self.target
        search_filter = fill_filter(target.template, address)
        connection.search(
            target.base_dn, search_filter, search_scope=ldap3.SUBTREE,
            attributes=["1.1"], size_limit=1, time_limit=max(1, int(target.timeout)),
        )
        result = connection.result or {}
        code = result.get("result")
        entries = [r for r in connection.response or () if r.get("type") == "searchResEntry"]
        where = f"ldap {connection.server.host} {search_filter}"
        if code in (SUCCESS, SIZE_LIMIT_EXCEEDED):
            if entries:
                return Lookup(Existence.EXISTS, f"{where}: {entries[0].get('dn')}")
            return Lookup(Existence.UNKNOWN, f"{where}: no entry")
        # Not an answer about the address: wrong base DN, access denied, time limit...
        raise VerifierUnavailable(
            f"{where}: {result.get('description')} ({result.get('message') or 'no message'})"
        )

    # -- on the event loop -------------------------------------------------------------

    async def lookup(self, address: str) -> Lookup:
        self.last_used = time.monotonic()
        loop = asyncio.get_running_loop()
        # connect + bind + search each have `timeout`; a server that stops answering is
        # given up on here even if its thread still waits for the socket timeout.
        try:
            async with asyncio.timeout(self.target.timeout * 3):
                return await loop.run_in_executor(self._executor, self._search_blocking, address)
        except TimeoutError:
            raise VerifierUnavailable(
                f"ldap {self.target.name}: no answer within {self.target.timeout * 3:g}s"
            ) from None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for connection in idle:
            _unbind(connection)
        self._executor.shutdown(wait=False, cancel_futures=True)


def _unbind(connection: ldap3.Connection) -> None:
    try:
        connection.unbind()
    except LDAPException:
        pass
    except OSError:
        pass
