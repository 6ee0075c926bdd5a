"""A real OpenLDAP slapd for the tests, run as a plain process with its own config.

Each instance gets a throwaway directory with a ``slapd.conf`` (the core, cosine and
inetorgperson schemas from /etc/ldap/schema plus a two-line schema of our own for the
Active Directory attribute ``proxyAddresses``), an mdb database loaded with ``slapadd``
before start, and a free loopback port. slapd runs in the foreground as our child (``-d``)
and is stopped by that PID.

The directory holds:
- ``cn=postwall,ou=services,BASE``: the service account Postwall binds as (its password
  is random per instance, in ``bind_password``; the file for Postwall is written with
  mode 0600 by ``password_file()``); it may read mail attributes and nothing else;
- one ``inetOrgPerson`` per test user with ``mail`` and, optionally, ``proxyAddresses``
  (``SMTP:primary`` / ``smtp:alias``), the way Exchange/AD keeps aliases.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.services import _REAPER as REAPER
from tests.support.services import (
    LOOPBACK,
    SAFE_ENV,
    LocalDaemon,
    ServiceError,
    _make_base_dir,
    _read_text,
    _register,
    _tail,
    free_port,
    wait_until,
)

SLAPD_BIN = Path("/usr/sbin/slapd")
SLAPADD_BIN = Path("/usr/sbin/slapadd")
SLAPPASSWD_BIN = Path("/usr/sbin/slappasswd")
SCHEMA_DIR = Path("/etc/ldap/schema")
MODULE_DIR = Path("/usr/lib/ldap")
BASE_DN = "dc=postwall,dc=test"
SERVICE_DN = f"cn=postwall,ou=services,{BASE_DN}"

# proxyAddresses with Active Directory's OID; case-insensitive like AD's own matching.
PROXY_ADDRESSES_SCHEMA = """\
attributetype ( 1.2.840.113556.1.2.210 NAME 'proxyAddresses'
    EQUALITY caseIgnoreMatch SUBSTR caseIgnoreSubstringsMatch
    SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 )
objectclass ( 1.3.6.1.4.1.99999.1.1 NAME 'postwallTestMailUser' AUXILIARY
    MAY proxyAddresses )
"""


def ldap_unavailable_reason() -> str | None:
    for binary in (SLAPD_BIN, SLAPADD_BIN, SLAPPASSWD_BIN):
        if not binary.exists():
            return f"slapd is not installed ({binary} missing): run scripts/install-test-deps"
    return None


@dataclass(frozen=True)
class LDAPUser:
    uid: str
    mail: str
    proxy_addresses: tuple[str, ...] = field(default=())

    @property
    def dn(self) -> str:
        return f"uid={self.uid},ou=people,{BASE_DN}"


class LDAPServer(LocalDaemon):
    """slapd on ``ldap://127.0.0.1:PORT`` with `users` loaded at start."""

    stop_timeout = 10.0

    def __init__(self, users: Iterable[LDAPUser] = (), *, base_dir: Path | None = None) -> None:
        self.users = tuple(users)
        self._own_base = base_dir is None
        self.base_dir = _make_base_dir("postwall-slapd-") if base_dir is None else base_dir
        self.db_dir = self.base_dir / "db"
        self.config_path = self.base_dir / "slapd.conf"
        self.output_path = self.base_dir / "slapd.log"
        self.port = free_port()
        self.bind_password = secrets.token_urlsafe(18)
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ldap://{LOOPBACK}:{self.port}"

    @property
    def base_dn(self) -> str:
        return BASE_DN

    @property
    def bind_dn(self) -> str:
        return SERVICE_DN

    def password_file(self, directory: Path, *, password: str | None = None,
                      mode: int = 0o600) -> Path:
        """The service account's password in a file as Postwall reads it (owner-only)."""
        path = directory / f"ldap-bind-{secrets.token_hex(4)}.secret"
        path.write_text((self.bind_password if password is None else password) + "\n")
        path.chmod(mode)
        return path

    # -- configuration -----------------------------------------------------------------

    def _hash(self, password: str) -> str:
        result = subprocess.run(
            [str(SLAPPASSWD_BIN), "-h", "{SSHA}", "-T", "/dev/stdin"], input=password.encode(),
            capture_output=True, env=SAFE_ENV, check=False,
        )
        if result.returncode != 0:
            raise ServiceError(f"slappasswd failed: {result.stderr.decode(errors='replace')}")
        return result.stdout.decode().strip()

    def configure(self) -> None:
        self.db_dir.mkdir(parents=True, exist_ok=True)
        schema = self.base_dir / "postwall-test.schema"
        schema.write_text(PROXY_ADDRESSES_SCHEMA)
        lines = [
            "# Written by tests/support/ldap_server.py for one test run.",
            *(f"include {SCHEMA_DIR / name}" for name in
              ("core.schema", "cosine.schema", "inetorgperson.schema")),
            f"include {schema}",
            f"pidfile {self.base_dir / 'slapd.pid'}",
            f"argsfile {self.base_dir / 'slapd.args'}",
            f"modulepath {MODULE_DIR}",
            "moduleload back_mdb",
            "database mdb",
            "maxsize 16777216",
            f'suffix "{BASE_DN}"',
            # No rootpw: nobody binds as the root DN; slapadd writes the entries offline.
            f'rootdn "cn=admin,{BASE_DN}"',
            f"directory {self.db_dir}",
            "index mail,proxyAddresses eq",
            "access to attrs=userPassword by anonymous auth by * none",
            f'access to * by dn.exact="{SERVICE_DN}" read by * none',
        ]
        self.config_path.write_text("\n".join(lines) + "\n")
        ldif = self.base_dir / "entries.ldif"
        ldif.write_text(self._ldif())
        result = subprocess.run(
            [str(SLAPADD_BIN), "-f", str(self.config_path), "-l", str(ldif)],
            capture_output=True, env=SAFE_ENV, check=False,
        )
        if result.returncode != 0:
            raise ServiceError(f"slapadd failed: {result.stderr.decode(errors='replace')}")

    def _ldif(self) -> str:
        entries = [
            f"dn: {BASE_DN}\nobjectClass: dcObject\nobjectClass: organization\n"
            "dc: postwall\no: Postwall tests\n",
            f"dn: ou=people,{BASE_DN}\nobjectClass: organizationalUnit\nou: people\n",
            f"dn: ou=services,{BASE_DN}\nobjectClass: organizationalUnit\nou: services\n",
            f"dn: {SERVICE_DN}\nobjectClass: person\nobjectClass: simpleSecurityObject\n"
            f"cn: postwall\nsn: service\nuserPassword: {self._hash(self.bind_password)}\n",
        ]
        for user in self.users:
            lines = [f"dn: {user.dn}", "objectClass: inetOrgPerson",
                     "objectClass: postwallTestMailUser", f"uid: {user.uid}",
                     f"cn: {user.uid}", f"sn: {user.uid}", f"mail: {user.mail}"]
            lines += [f"proxyAddresses: {value}" for value in user.proxy_addresses]
            entries.append("\n".join(lines) + "\n")
        return "\n".join(entries)

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, timeout: float = 20.0) -> LDAPServer:
        if self.is_running:
            return self
        reason = ldap_unavailable_reason()
        if reason:
            raise ServiceError(reason)
        if not (self.db_dir / "data.mdb").exists():
            self.configure()
        with self.output_path.open("ab") as out:
            # -d keeps slapd in the foreground as our child; "stats" logs every operation.
            self._proc = subprocess.Popen(
                [str(SLAPD_BIN), "-f", str(self.config_path), "-h", f"{self.url}/",
                 "-d", "stats"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=SAFE_ENV, start_new_session=True,
            )
        proc = self._proc
        REAPER.watch(proc.pid, group=True)
        _register(self)

        def ready() -> bool:
            if proc.poll() is not None:
                return True
            with contextlib.suppress(OSError), socket.create_connection(
                (LOOPBACK, self.port), timeout=0.5
            ):
                return True
            return False

        if not wait_until(ready, timeout, interval=0.02) or proc.poll() is not None:
            self.stop()
            raise ServiceError(f"slapd did not start within {timeout:g}s:\n{self.diagnostics()}")
        return self

    def log(self) -> str:
        return _read_text(self.output_path)

    def diagnostics(self) -> str:
        code = self._proc.poll() if self._proc else None
        status = f"exit code {code}" if code is not None else "still running"
        return f"{status}; output:\n{_tail(self.log(), 30)}"


class SilentTCPServer:
    """Accepts TCP connections and never says a word: an LDAP (or SMTP) server that hangs.
    The listening socket is ours, in this process; closed on exit of the block."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind((LOOPBACK, 0))
        self._sock.listen(64)  # the kernel completes handshakes; nobody ever reads
        self.port = int(self._sock.getsockname()[1])

    @property
    def url(self) -> str:
        return f"ldap://{LOOPBACK}:{self.port}"

    def __enter__(self) -> SilentTCPServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self._sock.close()
