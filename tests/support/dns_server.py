"""A real authoritative DNS server (NSD, from Debian's `nsd` package) on loopback, serving
the test zones, and a deliberately broken DNS server for the failure tests.

`AuthoritativeDNS` runs NSD in the foreground (`-d`) as a child process on a free port
of 127.0.0.1, UDP and TCP, with every file in a throwaway directory. Zones are plain
RFC 1035 zone files: `set_zone(origin, records)` writes one, bumps its serial, makes
NSD reload (SIGHUP) and waits until the new serial answers, so a test can publish a
record and query it at once. The proxy under test is pointed at it by configuration:
``dns: {nameservers: ["127.0.0.1:PORT"]}`` (see `nameserver`).

`BrokenDNS` is a UDP responder in a thread that answers every question the way it was
told to: not at all (a timeout), with garbage, with a truncated answer whose TCP retry
is refused, with SERVFAIL. It stands in for hostile or failing peers, not for a
service: there is no real server that misbehaves on request.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.nameserver
import dns.query
import dns.rcode
import dns.resolver

from tests.support.services import (
    _REAPER,
    LOOPBACK,
    LocalDaemon,
    ServiceError,
    _make_base_dir,
    _read_text,
    _register,
    free_port,
    wait_until,
)

NSD_BIN = Path(shutil.which("nsd", path="/usr/sbin:/usr/bin:/sbin:/bin") or "/usr/sbin/nsd")

SOA_TEMPLATE = (
    "$ORIGIN {origin}.\n$TTL {ttl}\n"
    "@ IN SOA ns.{origin}. hostmaster.{origin}. ({serial} 3600 600 86400 {negative_ttl})\n"
    "@ IN NS ns.{origin}.\n"
    "ns IN A 127.0.0.1\n"
)


def txt_record(text: str) -> str:
    """A TXT rdata of any length: split into quoted 255-octet character-strings (a DKIM key
    of 16 kbit does not fit in one)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    chunks = [escaped[i : i + 250] for i in range(0, len(escaped), 250)] or [""]
    return "( " + " ".join(f'"{chunk}"' for chunk in chunks) + " )"


class AuthoritativeDNS(LocalDaemon):
    """NSD serving the zones given by `set_zone`, on 127.0.0.1:`port` (UDP and TCP)."""

    stop_timeout = 10.0

    def __init__(self, *, port: int | None = None, ttl: int = 60, negative_ttl: int = 60) -> None:
        self.host = LOOPBACK
        self.port = port or free_port()
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.base_dir = _make_base_dir("postwall-nsd-")
        self._own_base = True
        self.zones_dir = self.base_dir / "zones"
        self.zones_dir.mkdir()
        self.config_path = self.base_dir / "nsd.conf"
        self.log_path = self.base_dir / "nsd.log"
        self._zones: dict[str, list[str]] = {}
        self._serial = int(time.time())
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def nameserver(self) -> str:
        """The value for the proxy's `dns.nameservers`."""
        return f"{self.host}:{self.port}"

    # -- zones ----------------------------------------------------------------------

    def set_zone(self, origin: str, records: Iterable[str], *, reload: bool = True) -> None:
        """Publish zone `origin` with `records` (zone-file lines relative to the origin,
        e.g. ``"2.0.0.127 IN A 127.0.0.2"``), replacing what it served before."""
        self.set_zones({origin: records}, reload=reload)

    def set_zones(self, zones: Mapping[str, Iterable[str]], *, reload: bool = True) -> None:
        """Publish several zones at once (one reload or restart)."""
        added = False
        for origin, records in zones.items():
            origin = origin.rstrip(".").lower()
            added |= origin not in self._zones
            self._zones[origin] = list(records)
            self._write_zone(origin)
        if not self.is_running or not reload:
            return
        if added:
            # NSD 4 loads new zones only at start (SIGHUP re-reads known zones' files).
            self.stop()
            self.start()
        else:
            self.reload(*(o.rstrip(".").lower() for o in zones))

    def _write_zone(self, origin: str) -> None:
        self._serial += 1
        text = SOA_TEMPLATE.format(
            origin=origin, ttl=self.ttl, serial=self._serial, negative_ttl=self.negative_ttl
        )
        text += "\n".join(self._zones[origin]) + "\n"
        (self.zones_dir / f"{origin}.zone").write_text(text)

    def _write_config(self) -> None:
        lines = [
            "server:",
            f"    ip-address: {self.host}@{self.port}",
            "    do-ip6: no",
            "    server-count: 1",
            "    username: \"\"",
            "    chroot: \"\"",
            f"    zonesdir: \"{self.zones_dir}\"",
            f"    pidfile: \"{self.base_dir / 'nsd.pid'}\"",
            f"    logfile: \"{self.log_path}\"",
            f"    xfrdfile: \"{self.base_dir / 'xfrd.state'}\"",
            f"    zonelistfile: \"{self.base_dir / 'zone.list'}\"",
            f"    xfrdir: \"{self.base_dir}\"",
            "    database: \"\"",
            "    verbosity: 1",
            "    hide-version: yes",
            "    refuse-any: yes",
            "remote-control:",
            "    control-enable: no",
        ]
        for origin in sorted(self._zones):
            lines += ["zone:", f"    name: \"{origin}\"", f"    zonefile: \"{origin}.zone\""]
        self.config_path.write_text("\n".join(lines) + "\n")

    def check_config(self) -> None:
        checkconf = NSD_BIN.with_name("nsd-checkconf")
        if checkconf.exists():
            result = subprocess.run(
                [str(checkconf), str(self.config_path)], capture_output=True, text=True,
                check=False,
            )
            if result.returncode != 0:
                raise ServiceError(f"nsd-checkconf failed:\n{result.stdout}{result.stderr}")

    # -- process ----------------------------------------------------------------------

    def start(self, timeout: float = 15.0) -> None:
        if self.is_running:
            return
        if not NSD_BIN.exists():
            raise ServiceError(f"NSD is not installed ({NSD_BIN}): run scripts/install-test-deps")
        self._write_config()
        self.check_config()
        with (self.base_dir / "stderr.log").open("ab") as err:
            self._proc = subprocess.Popen(
                [str(NSD_BIN), "-d", "-c", str(self.config_path)],
                stdout=err, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        _REAPER.watch(self._proc.pid, group=True)
        _register(self)
        origins = list(self._zones) or []
        if not wait_until(lambda: self._serves(origins) or not self.is_running, timeout):
            self.stop()
            raise ServiceError(f"NSD did not answer within {timeout:g}s:\n{self.diagnostics()}")
        if not self.is_running:
            raise ServiceError(f"NSD exited at start-up:\n{self.diagnostics()}")

    def _serial_of(self, origin: str) -> int | None:
        query = dns.message.make_query(f"{origin}.", "SOA")
        try:
            response = dns.query.udp(query, self.host, port=self.port, timeout=0.5)
        except (OSError, dns.exception.DNSException):
            return None
        for rrset in response.answer:
            return int(rrset[0].serial)
        return None

    def _serves(self, origins: Iterable[str]) -> bool:
        origins = list(origins)
        if not origins:  # no zone: wait for the port to answer at all
            query = dns.message.make_query("probe.invalid.", "A")
            try:
                dns.query.udp(query, self.host, port=self.port, timeout=0.5)
                return True
            except (OSError, dns.exception.DNSException):
                return False
        return all(self._serial_of(origin) is not None for origin in origins)

    def reload(self, *origins: str, timeout: float = 10.0) -> None:
        """SIGHUP makes NSD re-read the configuration and the changed zone files; wait
        until the zones answer with the serial just written."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            raise ServiceError("NSD is not running")
        proc.send_signal(signal.SIGHUP)
        wanted = {
            origin: int((self.zones_dir / f"{origin}.zone").read_text().split("(", 1)[1].split()[0])
            for origin in (origins or self._zones)
        }
        streak = [0]

        def loaded() -> bool:
            # NSD's old server process may answer for a moment after the new one does:
            # only several new answers in a row mean the reload is complete.
            fresh = all(self._serial_of(o) == serial for o, serial in wanted.items())
            streak[0] = streak[0] + 1 if fresh else 0
            return streak[0] >= 5

        if not wait_until(loaded, timeout, interval=0.02):
            raise ServiceError(f"NSD did not load the new zones:\n{self.diagnostics()}")

    def diagnostics(self) -> str:
        return _read_text(self.log_path)[-4000:] + _read_text(self.base_dir / "stderr.log")[-4000:]

    def resolve(self, name: str, rdtype: str = "A") -> list[str]:
        """Ask the server directly (for test assertions): the records' text, or []."""
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver(self.host, self.port)]
        resolver.lifetime = 3
        try:
            return [r.to_text() for r in resolver.resolve(name, rdtype, search=False)]
        except dns.resolver.NXDOMAIN:
            return []
        except dns.resolver.NoAnswer:
            return []


# --------------------------------------------------------------------------------------
# A DNS server that misbehaves on purpose
# --------------------------------------------------------------------------------------

BEHAVIOURS = ("silent", "garbage", "truncated", "servfail", "refused", "wrong_id", "short")


class BrokenDNS:
    """A UDP DNS responder on 127.0.0.1:`port` that answers every question with
    `behaviour` (one of BEHAVIOURS); TCP on the same port is refused. `queries` counts
    the questions it saw."""

    def __init__(self, behaviour: str = "silent") -> None:
        if behaviour not in BEHAVIOURS:
            raise ValueError(f"unknown behaviour {behaviour!r}; one of {BEHAVIOURS}")
        self.behaviour = behaviour
        self.host = LOOPBACK
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((self.host, 0))
        self._sock.settimeout(0.2)
        self.port = int(self._sock.getsockname()[1])
        self.queries = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="broken-dns", daemon=True)

    @property
    def nameserver(self) -> str:
        return f"{self.host}:{self.port}"

    def __enter__(self) -> BrokenDNS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, client = self._sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.queries += 1
            reply = self._reply(data)
            if reply is not None:
                with contextlib.suppress(OSError):
                    self._sock.sendto(reply, client)

    def _reply(self, data: bytes) -> bytes | None:
        behaviour = self.behaviour
        if behaviour == "silent":
            return None
        if behaviour == "garbage":
            return data[:2] + os.urandom(40)  # the right id, then noise
        if behaviour == "short":
            return data[:5]  # shorter than a DNS header
        try:
            query = dns.message.from_wire(data)
        except dns.exception.DNSException:
            return None
        response = dns.message.make_response(query)
        if behaviour == "servfail":
            response.set_rcode(dns.rcode.SERVFAIL)
        elif behaviour == "refused":
            response.set_rcode(dns.rcode.REFUSED)
        elif behaviour == "truncated":
            response.flags |= dns.flags.TC  # "ask again over TCP", and TCP is refused
        elif behaviour == "wrong_id":
            response.id = (query.id + 1) % 65536
        return response.to_wire()

