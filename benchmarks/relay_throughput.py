#!/usr/bin/env python3
"""Relay throughput benchmark: load generator -> subject -> recording sink, one table.

Measured in ONE run on the same machine, for every (message size x concurrency) cell:
messages per second, p50/p99 latency, peak RSS of the subject and failures.

Subjects
  a  sink      the load generator straight into the sink (baseline: the generator's ceiling)
  b  postfix   a throwaway Postfix instance (own config dir, queue, log) relaying to the sink
  c  postwall  ``python -m appliance serve --config FILE --workers N`` in front of the sink
  d  (only on request) the whole appliance: Postwall in front of a Postfix relay in front of
     the sink, all on the same cores, as deployed

The sink is Postfix's ``smtp-sink`` (C, event-driven, throws mail away); its running
message counter is read after every cell to check that everything acknowledged with 250
really arrived (for Postfix, which queues, the cell also waits for its queue to drain and
reports the end-to-end delivery rate).

Load generator
  Python asyncio (uvloop when importable) on raw sockets, in ``--gen-procs`` processes
  (default: one per core) started once and fed a job per cell. Each of the ``conc``
  concurrent slots runs SMTP sessions back to back without pipelining:
  connect, 220, EHLO, then ``--msgs-per-conn`` transactions (MAIL, RCPT, DATA, message,
  ".") and QUIT. The default is ONE message per session (the realistic internet case:
  every message pays for its connection, greeting and EHLO). Every slot binds its own
  source address in 127.0.0.0/8 (``--source-ips``), as if the clients were different hosts,
  so that per-IP connection limits of a subject do not turn into failures.

Definitions
  msg/s        messages acknowledged with 250 after DATA that completed inside the
               measurement window, divided by the window (``--duration`` seconds after a
               ``--warmup``); with ``--messages N`` a fixed count instead, divided by the time
               from the end of the warm-up until the last of them completed.
  p50/p99 ms   per-message TRANSACTION latency: from sending MAIL FROM to receiving the
               250 after the final "." (connect/greeting/EHLO/QUIT are not included; the
               whole-session latencies are in the details table and the JSON file).
  peak RSS MB  peak over the cell of the summed RSS of the subject's process tree,
               sampled every 100 ms from /proc (Postfix: master and all its children;
               Postwall: the parent and its workers; baseline: smtp-sink). Summed RSS counts
               shared pages once per process, so it overstates multi-process subjects.
  errors       sessions/messages that got an unexpected reply (not 2xx/354), a connection
               failure or a timeout, counted per message and broken down as CODE@STAGE.
               A cell with errors, or with mail that never reached the sink, is marked ⚠.
  Postfix queues (store and forward): its latency is until the mail is queued, not
  delivered; the details table shows how long its queue took to drain after the load
  stopped and the resulting end-to-end rate. Postwall is in-line: its 250 means the sink
  already said 250.

Requirements: Debian's ``postfix`` package (for ``smtp-sink`` and subject b), installed
e.g. by ``scripts/install-test-deps``; run as root (smtp-sink and postfix drop privileges
themselves) with the project's venv interpreter:

    .venv/bin/python benchmarks/relay_throughput.py                 # everything, < 5 min
    .venv/bin/python benchmarks/relay_throughput.py --quick         # short cells
    .venv/bin/python benchmarks/relay_throughput.py --only c --filters default,every

The table goes to stdout and to ``benchmarks/results/latest.md`` (raw numbers to
``latest.json`` next to it).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import copy
import importlib.util
import json
import multiprocessing
import multiprocessing.connection
import os
import platform
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"

SMTP_SINK = "/usr/sbin/smtp-sink"
SMTP_SOURCE = "/usr/sbin/smtp-source"
POSTFIX = "/usr/sbin/postfix"
POSTCONF = "/usr/sbin/postconf"

SENDER = "sender@bench-sender.test"
RECIPIENT = "user@example.com"
CLIENT_HELO = "client.bench.test"

# ---------------------------------------------------------------------------------------
# Postwall configuration. BASE is written for every Postwall run; the filter sets below are
# deep-merged on top of it, one Postwall run per set named in --filters.
#
# LEAD: fill in EVERY_FILTER_CONFIG as filters land. Its entries are chosen NOT to match the
# benchmark's traffic (client 127.0.0.x, sender bench-sender.test, recipient example.com,
# plain text + a PDF attachment), so that every check runs in full and every message is
# still delivered: an entry that matches would short-circuit (allow/whitelist/noprocessing)
# or block (deny/blacklist/bomb_re), and the cell would show errors.
# ---------------------------------------------------------------------------------------
POSTWALL_BASE_CONFIG: dict[str, Any] = {
    # listen / downstream / data_dir / metrics are filled in at run time.
    "relay_networks": ["127.0.0.0/8"],
    "local_domains": ["example.com"],
    "smtp": {"hostname": "bench.test"},
    "log_level": "warning",
}

EVERY_FILTER_CONFIG: dict[str, Any] = {
    "filters": {
        "ip_lists": {
            "mode": "block",
            "allow": ["192.0.2.0/24", "198.51.100.7/32", "2001:db8:1::/48"],
            "deny": ["203.0.113.0/24", "198.18.0.0/15", "100.64.0.0/10", "2001:db8:dead::/48"],
        },
        "address_lists": {
            "mode": "block",
            "whitelist": ["friend@partner.example", "@trusted.example", "*.bank.example"],
            "blacklist": [
                "spammer@spam.example",
                "@junk.example",
                "*.bulk.example",
                r"/^offers?[0-9]+@/",
            ],
            "redlist": ["noreply@autoresponder.example"],
            "noprocessing": ["@monitoring.example"],
            "spamlovers": ["abuse@example.com"],
        },
        "regex": {
            "mode": "block",
            "bomb_re": [
                {"pattern": r"\bv[i1]agra\b|\bc[i1]al[i1]s\b", "weight": 1.0},
                {"pattern": r"you (have )?won (a|the) (lottery|prize)", "weight": 1.0},
                {"pattern": r"\b(bitcoin|crypto) (wallet|investment) opportunit", "weight": 1.0},
                {"pattern": r"click here to (claim|unsubscribe now)", "weight": 0.5},
                {"pattern": r"https?://[a-z0-9.-]+\.(zip|mov|top|xyz)/", "weight": 1.0},
                {"pattern": r"100% (free|guaranteed)", "weight": 0.5},
            ],
            "bomb_subject_re": [
                {"pattern": r"^\s*(re: )*urgent", "weight": 1.0},
                {"pattern": r"\$\$\$|!!!", "weight": 1.0},
            ],
            "white_re": [{"pattern": r"X-Bench-Never-Present: yes", "weight": 1.0}],
            "red_re": [{"pattern": r"^Auto-Submitted: auto-replied", "weight": 1.0}],
        },
        "attachments": {"mode": "block", "level": 3, "scan_archives": True},
        "size": {"mode": "score", "max_size": 10 * 1024 * 1024},
    },
}

def deep_merge_static(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`deep_merge` for module constants (defined before the run-time helpers)."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge_static(out[key], value)
        else:
            out[key] = value
    return out


# Probes sent once after Postwall started with a filter set, to show that its filters act:
# (description, MAIL FROM, RCPT TO, expected first digit of the reply at MAIL/RCPT/DATA end).
FILTER_SET_PROBES: dict[str, list[tuple[str, str, str, str]]] = {
    "every": [
        ("blacklisted sender is refused", "spammer@spam.example", RECIPIENT, "5"),
        ("benchmark traffic is accepted", SENDER, RECIPIENT, "2"),
    ],
}

# Every filter switched off: the bare in-line proxy (its own overhead).
NO_FILTER_CONFIG: dict[str, Any] = {
    "filters": {
        name: {"mode": "off"}
        for name in ("ip_lists", "address_lists", "regex", "attachments", "size")
    },
}

# Every network and client check on, against a local NSD serving the zones below and a
# local clamd (both started by the benchmark, from tests/support). The records make the
# benchmark traffic pass every check after doing its full work: the client 127.0.x.y is
# not listed (the RFC 5782 test entry 127.0.0.2 is, for the sanity probes), SPF passes
# for bench-sender.test, DMARC passes aligned with SPF, the HELO name resolves, every
# 127/8 address has a PTR (confirmed for 127.0.0.1 only), the sender domain has an MX,
# clamd scans every message. relay_networks is moved away from 127/8 so that the
# benchmark's clients are outside clients, which every check judges. The filled-in
# addresses (`dns.nameservers`, `filters.clamav.address`) are set at run time.
NETWORK_ZONES: dict[str, list[str]] = {
    "bl.bench.test": ['2.0.0.127 IN A 127.0.0.2', '2.0.0.127 IN TXT "test entry"'],
    "wl.bench.test": ["2.0.0.127 IN A 127.0.0.2"],
    "uribl.bench.test": ["test IN A 127.0.0.2"],
    "bench-sender.test": [
        "@ IN MX 10 mx.bench-sender.test.",
        "mx IN A 127.0.0.1",
        '@ IN TXT "v=spf1 ip4:127.0.0.0/8 -all"',
        '_dmarc IN TXT "v=DMARC1; p=reject; adkim=r; aspf=r"',
    ],
    "bench.test": ["client IN A 127.0.0.1", "@ IN MX 10 client.bench.test."],
    "127.in-addr.arpa": ["* IN PTR client.bench.test."],
}

NETWORK_FILTER_CONFIG: dict[str, Any] = deep_merge_static(EVERY_FILTER_CONFIG, {
    "relay_networks": ["192.0.2.0/24"],
    "dns": {"timeout": 2.0, "lifetime": 4.0},
    "filters": {
        "clamav": {"mode": "block", "timeout": 30},
        "dnsbl": {
            "mode": "block", "check_private": True,
            "zones": [{"zone": "bl.bench.test", "label": "BENCH", "weight": 3}],
            "dnswl_zones": [{"zone": "wl.bench.test", "label": "BENCHWL", "weight": -1}],
        },
        "uribl": {
            "mode": "block",
            "zones": [{"zone": "uribl.bench.test", "label": "BENCH", "weight": 3}],
        },
        "helo": {"mode": "block", "check_dns": True},
        "fcrdns": {"mode": "score"},
        "sender": {"mode": "block"},
        "spf": {"mode": "block"},
        "dkim": {"mode": "score"},
        "dmarc": {"mode": "block"},
        "greylist": {"mode": "score", "delay": 1},
        "penalty_box": {"mode": "block"},
        "rate_limits": {
            "mode": "block", "connections_per_minute": 1_000_000,
            "messages_per_hour": 10_000_000,
        },
    },
})
FILTER_SET_PROBES["network"] = FILTER_SET_PROBES["every"]

POSTWALL_FILTER_SETS: dict[str, dict[str, Any]] = {
    "default": {},  # the schema's defaults
    "every": EVERY_FILTER_CONFIG,
    "network": NETWORK_FILTER_CONFIG,
    "off": NO_FILTER_CONFIG,
}

# Extra main.cf settings for the Postfix subject beyond what the brief requires; empty by
# default so that Postfix runs with its stock tuning (try --postfix-set KEY=VALUE).
POSTFIX_EXTRA_MAIN_CF: dict[str, str] = {}


# =======================================================================================
# Messages
# =======================================================================================

WORDS = tuple(
    " ".join(
        (
            "meeting agenda quarterly report budget review project schedule update team",
            "customer invoice delivery order shipment contract draft proposal attached",
            "please find regards thanks colleague department office tomorrow monday friday",
            "afternoon morning discuss question answer request approval summary figures",
            "forecast planning minutes notes support ticket release version server network",
            "backup storage training workshop",
        )
    ).split(" ")
)

MSGID_SLOT = b"Message-ID: <%010d.%07d@bench-sender.test>\r\n"


def _text_lines(rng: random.Random, nbytes: int) -> list[bytes]:
    """CRLF-terminated text lines (<= 78 octets) totalling exactly nbytes (nbytes >= 2)."""
    lines: list[bytes] = []
    left = nbytes
    while left > 0:
        if left <= 80:
            body_len = left - 2
            if body_len < 0:  # a single octet cannot be a line: widen the previous one
                prev = lines.pop()
                lines.append(prev[:-2] + b"x" * left + b"\r\n")
                break
            text = b""
            while len(text) < body_len:
                text += rng.choice(WORDS).encode() + b" "
            lines.append(text[:body_len].rstrip(b" ").ljust(body_len, b".") + b"\r\n")
            break
        text = b""
        while len(text) < 60:
            text += rng.choice(WORDS).encode() + b" "
        line = text.rstrip(b" ").capitalize() + b".\r\n"
        lines.append(line)
        left -= len(line)
    # no line may start with "." (no dot-stuffing needed) - the generator never does that
    return lines


def build_message(size: int, seed: int = 42) -> tuple[bytes, bytes]:
    """Return (message-id template, rest): len(template % (n, pid)) + len(rest) == size.

    Up to 16 KiB: a plain text mail. Larger: multipart/mixed with a short text part and a
    base64 PDF attachment filling the rest (what a 100 KiB business mail looks like).
    """
    rng = random.Random(seed)
    head = (
        f"From: Bench Sender <{SENDER}>\r\n"
        f"To: Bench User <{RECIPIENT}>\r\n"
        "Subject: Quarterly report and meeting notes\r\n"
        "Date: Mon, 02 Mar 2026 10:00:00 +0000\r\n"
        "MIME-Version: 1.0\r\n"
    ).encode()
    msgid_len = len(MSGID_SLOT % (0, 0))
    fixed = msgid_len + len(head)
    if size <= 16 * 1024:
        ctype = b"Content-Type: text/plain; charset=us-ascii\r\n\r\n"
        body_len = size - fixed - len(ctype)
        if body_len < 100:
            raise ValueError(f"message size {size} too small")
        rest = head + ctype + b"".join(_text_lines(rng, body_len))
    else:
        boundary = b"=_bench_boundary_0123456789"
        ctype = b'Content-Type: multipart/mixed; boundary="' + boundary + b'"\r\n\r\n'
        text_part_head = (
            b"--" + boundary + b"\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
        )
        att_head = (
            b"--" + boundary + b"\r\nContent-Type: application/pdf; name=\"report.pdf\"\r\n"
            b"Content-Disposition: attachment; filename=\"report.pdf\"\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n"
        )
        closing = b"--" + boundary + b"--\r\n"
        text_len = 1500
        overhead = fixed + len(ctype) + len(text_part_head) + text_len + len(att_head)
        overhead += len(closing)
        b64_budget = size - overhead
        # base64 lines of 76 chars + CRLF; last line shorter; a multiple of 4 chars
        full, rem = divmod(b64_budget, 78)
        last_chars = max(rem - 2, 0) // 4 * 4
        slack = b64_budget - full * 78 - (last_chars + 2 if last_chars else 0)
        raw = rng.randbytes((full * 76 + last_chars) // 4 * 3)
        import base64

        b64 = base64.b64encode(raw)
        att_lines = [b64[i : i + 76] + b"\r\n" for i in range(0, len(b64), 76)]
        text = b"".join(_text_lines(rng, text_len + slack))
        rest = (
            head + ctype + text_part_head + text + att_head + b"".join(att_lines) + closing
        )
    total = msgid_len + len(rest)
    if total != size:
        raise AssertionError(f"built {total} octets, wanted {size}")
    return MSGID_SLOT, rest


# =======================================================================================
# Load generator (runs in child processes)
# =======================================================================================


@dataclass
class GenJob:
    host: str
    port: int
    size: int
    slots: list[int]  # global slot numbers of this process (source address = slot)
    source_ips: int  # 0/1: no binding (127.0.0.1); else slot % N -> 127.0.1.x / 127.0.x.y
    msgs_per_conn: int
    start_at: float  # time.monotonic() (CLOCK_MONOTONIC, shared by all processes)
    warmup: float
    duration: float | None  # measured seconds; None when a fixed count is used
    messages: int | None  # messages this process must complete after the warm-up
    timeout: float  # whole-session timeout


@dataclass
class GenResult:
    ok: int = 0  # measured
    ok_total: int = 0  # including warm-up and tail (for the sink check)
    attempted_total: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # measured, CODE@STAGE -> count
    errors_total: int = 0
    error_samples: list[str] = field(default_factory=list)
    tx_ms: list[float] = field(default_factory=list)
    session_ms: list[float] = field(default_factory=list)
    first_start: float = 0.0
    last_end: float = 0.0
    cpu_s: float = 0.0


class SMTPReplyError(Exception):
    def __init__(self, stage: str, code: int, text: str) -> None:
        super().__init__(f"{code}@{stage}: {text}")
        self.stage = stage
        self.code = code
        self.text = text


class _ClientProtocol(asyncio.Protocol):
    """Minimal SMTP client side: collects complete (possibly multi-line) replies."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._replies: deque[tuple[int, bytes]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._exc: BaseException | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        start = 0
        while True:
            end = buf.find(b"\n", start)
            if end < 0:
                break
            line = bytes(buf[start : end + 1])
            start = end + 1
            if line[3:4] == b"-":
                continue  # continuation line of a multi-line reply
            code = int(line[:3]) if line[:3].isdigit() else -1
            self._replies.append((code, line))
        if start:
            del buf[:start]
        waiter = self._waiter
        if self._replies and waiter is not None and not waiter.done():
            waiter.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._exc = exc or ConnectionResetError("connection closed by server")
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def reply(self) -> tuple[int, bytes]:
        while not self._replies:
            if self._exc is not None:
                raise self._exc
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
            self._waiter = None
        return self._replies.popleft()

    async def expect(self, stage: str, ok: Callable[[int], bool]) -> None:
        code, line = await self.reply()
        if not ok(code):
            raise SMTPReplyError(stage, code, line.decode("ascii", "replace").strip())


def _is2(code: int) -> bool:
    return 200 <= code < 300


def _is354(code: int) -> bool:
    return code == 354


def _source_addr(slot: int, n_ips: int) -> tuple[str, int] | None:
    if n_ips <= 1:
        return None
    k = slot % n_ips
    return (f"127.0.{1 + k // 250}.{1 + k % 250}", 0)


async def _run_job(job: GenJob) -> GenResult:
    loop = asyncio.get_running_loop()
    res = GenResult()
    msgid_tpl, rest = build_message(job.size)
    pid = os.getpid() % 10_000_000
    counter = 0
    mail_cmd = f"MAIL FROM:<{SENDER}> SIZE={job.size}\r\n".encode()
    rcpt_cmd = f"RCPT TO:<{RECIPIENT}>\r\n".encode()
    ehlo_cmd = f"EHLO {CLIENT_HELO}\r\n".encode()
    measure_start = job.start_at + job.warmup
    end_at = measure_start + job.duration if job.duration is not None else None
    remaining = job.messages if job.messages is not None else 0
    errors: Counter[str] = Counter()
    samples: set[str] = set()
    now = time.monotonic

    def keep_going() -> bool:
        t = now()
        if end_at is not None:
            return t < end_at
        return t < measure_start or remaining > 0

    def note_error(key: str, text: str, t_end: float) -> None:
        res.errors_total += 1
        if t_end >= measure_start:  # sessions start only before the end of the window
            errors[key] += 1
        if len(samples) < 5:
            samples.add(f"{key}: {text}"[:200])

    async def session(slot: int) -> None:
        nonlocal counter, remaining
        stage = "connect"
        t_conn = now()
        transport: asyncio.Transport | None = None
        measured_session = False
        try:
            async with asyncio.timeout(job.timeout):
                transport, proto = await loop.create_connection(
                    _ClientProtocol,
                    job.host,
                    job.port,
                    local_addr=_source_addr(slot, job.source_ips),
                )
                await proto.expect("connect", _is2)
                stage = "ehlo"
                transport.write(ehlo_cmd)
                await proto.expect(stage, _is2)
                for _ in range(job.msgs_per_conn):
                    t0 = now()
                    measured = t0 >= measure_start and (end_at is not None or remaining > 0)
                    if measured and end_at is None:
                        remaining -= 1
                    if measured:
                        measured_session = True
                    counter += 1
                    res.attempted_total += 1
                    stage = "mail"
                    transport.write(mail_cmd)
                    await proto.expect(stage, _is2)
                    stage = "rcpt"
                    transport.write(rcpt_cmd)
                    await proto.expect(stage, _is2)
                    stage = "data"
                    transport.write(b"DATA\r\n")
                    await proto.expect(stage, _is354)
                    stage = "dot"
                    transport.write(msgid_tpl % (counter % 10_000_000_000, pid) + rest + b".\r\n")
                    await proto.expect(stage, _is2)
                    t1 = now()
                    res.ok_total += 1
                    if end_at is not None:
                        if measure_start <= t1 <= end_at:
                            res.ok += 1
                            res.tx_ms.append((t1 - t0) * 1000.0)
                    elif measured:
                        res.ok += 1
                        res.tx_ms.append((t1 - t0) * 1000.0)
                        res.last_end = max(res.last_end, t1)
                    if not keep_going():
                        break
                stage = "quit"
                transport.write(b"QUIT\r\n")
                with contextlib.suppress(Exception):
                    await proto.expect(stage, _is2)  # a lost 221 is not a failed message
                t_done = now()
                if measured_session or (end_at is not None and measure_start <= t_done <= end_at):
                    res.session_ms.append((t_done - t_conn) * 1000.0)
        except SMTPReplyError as exc:
            note_error(f"{exc.code}@{exc.stage}", exc.text, now())
            await asyncio.sleep(0.01)  # a real client backs off too
        except TimeoutError:
            if stage != "quit":  # a message already acknowledged is not failed by a slow 221
                note_error(f"timeout@{stage}", f"no reply within {job.timeout}s", now())
        except OSError as exc:
            note_error(f"{type(exc).__name__}@{stage}", str(exc), now())
            await asyncio.sleep(0.01)  # do not spin on a refused connection
        finally:
            if transport is not None:
                transport.close()

    async def slot_loop(slot: int) -> None:
        while keep_going():
            await session(slot)

    delay = job.start_at - now()
    if delay > 0:
        await asyncio.sleep(delay)
    res.first_start = now()
    cpu0 = time.process_time()
    await asyncio.gather(*(slot_loop(s) for s in job.slots))
    res.cpu_s = time.process_time() - cpu0
    res.errors = dict(errors)
    res.error_samples = sorted(samples)
    return res


def _gen_process_main(conn: multiprocessing.connection.Connection) -> None:
    """Child process: run one job per message received until None arrives."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles ^C and stops us
    try:
        import uvloop  # type: ignore[import-not-found]

        runner: Callable[[Any], GenResult] = uvloop.run
    except ImportError:
        runner = asyncio.run
    while True:
        job = conn.recv()
        if job is None:
            return
        try:
            conn.send(runner(_run_job(job)))
        except Exception as exc:  # report, do not hang the parent
            conn.send(exc)


class LoadGenerator:
    """A few persistent generator processes; one job per process per cell."""

    def __init__(self, procs: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conns: list[multiprocessing.connection.Connection] = []
        self.procs: list[multiprocessing.process.BaseProcess] = []
        for _ in range(procs):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_gen_process_main, args=(child,), daemon=True)
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)

    def submit(self, jobs: list[GenJob]) -> None:
        for conn, job in zip(self.conns, jobs, strict=False):
            conn.send(job)

    def collect(self, n: int) -> list[GenResult]:
        out: list[GenResult] = []
        for conn in self.conns[:n]:
            item = conn.recv()
            if isinstance(item, BaseException):
                raise RuntimeError(f"load generator process failed: {item!r}") from item
            out.append(item)
        return out

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(None)
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()


# =======================================================================================
# Process-tree sampling (/proc)
# =======================================================================================

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _proc_stats() -> dict[int, tuple[int, int, int]]:
    """pid -> (ppid, rss_bytes, cpu_ticks incl. reaped children) for every process."""
    out: dict[int, tuple[int, int, int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                data = fh.read()
        except OSError:
            continue
        fields = data[data.rfind(b")") + 2 :].split()
        # fields[0] is field 3 (state): ppid=4, utime=14..cstime=17, rss=24
        ppid = int(fields[1])
        cpu = int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
        out[int(name)] = (ppid, int(fields[21]) * PAGE, cpu)
    return out


def tree_members(root: int, stats: dict[int, tuple[int, int, int]]) -> list[int]:
    """root and all its descendants that exist in stats."""
    if root not in stats:
        return []
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    members, todo = [], [root]
    while todo:
        pid = todo.pop()
        members.append(pid)
        todo.extend(children.get(pid, ()))
    return members


def tree_usage(root: int) -> tuple[int, float, list[int]]:
    """(summed RSS bytes, CPU seconds, member pids) of root and all its descendants."""
    stats = _proc_stats()
    members = tree_members(root, stats)
    rss = sum(stats[p][1] for p in members)
    cpu = sum(stats[p][2] for p in members)
    return rss, cpu / CLK_TCK, members


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy (all cores; not idle, not iowait)."""
    with open("/proc/stat", "rb") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    steal = fields[7] if len(fields) > 7 else 0
    return (sum(fields[:8]) - idle - steal) / CLK_TCK


def cpu_snapshot(roots: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds used so far by each named group of process trees, plus 'machine'."""
    stats = _proc_stats()
    # this process alone (its tree holds the generator, the sink and the subjects)
    out = {"machine": machine_busy_s(), "self": time.process_time()}
    for name, pids in roots.items():
        ticks = 0
        for root in pids:
            ticks += sum(stats[p][2] for p in tree_members(root, stats))
        out[name] = ticks / CLK_TCK
    return out


def summed_pss(pids: list[int]) -> int:
    """Summed proportional set size (shared pages split between their users), bytes."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup", "rb") as fh:
                for line in fh:
                    if line.startswith(b"Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            continue
    return total


class TreeSampler(threading.Thread):
    """Samples a process tree every `interval` s: peak summed RSS (and PSS every ~1 s)."""

    def __init__(self, roots: list[int], interval: float = 0.1) -> None:
        super().__init__(daemon=True, name="rss-sampler")
        self.roots = roots
        self.interval = interval
        self.pss_every = max(1, round(1.0 / interval))
        self.peak_rss = 0
        self.peak_pss = 0
        self.peak_procs = 0
        self._stop_evt = threading.Event()
        self._lock = threading.Lock()
        self.own_cpu_s = 0.0

    def _sample(self, with_pss: bool) -> None:
        rss, members = 0, []
        for root in self.roots:
            root_rss, _, root_members = tree_usage(root)
            rss += root_rss
            members += root_members
        pss = summed_pss(members) if with_pss else 0
        with self._lock:
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_pss = max(self.peak_pss, pss)
            self.peak_procs = max(self.peak_procs, len(members))

    def run(self) -> None:
        tick = 0
        while not self._stop_evt.is_set():
            t = time.thread_time()
            self._sample(tick % self.pss_every == 0)
            tick += 1
            self.own_cpu_s += time.thread_time() - t
            self._stop_evt.wait(self.interval)

    def reset(self) -> None:
        with self._lock:
            self.peak_rss = self.peak_pss = self.peak_procs = 0
        self._sample(True)

    def stop(self) -> None:
        self._stop_evt.set()
        self.join(timeout=2)


# =======================================================================================
# Subjects
# =======================================================================================


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_banner(port: int, timeout: float, alive: Callable[[], bool] | None = None) -> str:
    """Wait until 127.0.0.1:port answers with a 220 greeting; return it."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise RuntimeError("the process exited before it answered")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                data = b""
                while not data.endswith(b"\n"):
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                last = data.decode("ascii", "replace").strip()
                if data.startswith(b"220"):
                    with contextlib.suppress(OSError):
                        sock.sendall(b"QUIT\r\n")
                        sock.recv(4096)
                    return last
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise RuntimeError(f"127.0.0.1:{port} did not greet with 220 within {timeout}s ({last})")


def kill_tree(root: int, sig: int = signal.SIGKILL) -> None:
    """Signal root's descendants and root, by PID (only processes we started)."""
    for pid in reversed(tree_members(root, _proc_stats())):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return False
    return data[data.rfind(b")") + 2 : data.rfind(b")") + 3] != b"Z"


class Sink:
    """smtp-sink on 127.0.0.1:port with a live message counter (-c) in its output file."""

    def __init__(self, workdir: Path, backlog: int = 1000) -> None:
        self.port = free_port()
        self.out = workdir / "smtp-sink.out"
        self._fh = open(self.out, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                SMTP_SINK, "-c", "-u", "nobody", "-m", str(max(backlog, 256)),
                f"127.0.0.1:{self.port}", str(backlog),
            ],
            stdout=self._fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for_banner(self.port, 10, lambda: self.proc.poll() is None)

    def received(self) -> int:
        """Messages received so far (smtp-sink's running 'mesg=' counter)."""
        with open(self.out, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(fh.tell() - 200, 0))
            tail = fh.read()
        found = re.findall(rb"mesg=(\d+)", tail)
        return int(found[-1]) if found else 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._fh.close()


class Subject:
    name = "?"
    label = "?"
    port = 0
    root_pid = 0
    queues = False  # store-and-forward: wait for the queue to drain after each cell

    def roots(self) -> list[int]:
        """PIDs whose process trees make up the subject."""
        return [self.root_pid] if self.root_pid else []

    def deferred(self) -> int:
        return 0

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        return ""


class SinkSubject(Subject):
    name = "a"
    label = "a sink (baseline)"

    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    def start(self) -> None:
        self.port = self.sink.port
        self.root_pid = self.sink.proc.pid

    def stop(self) -> None:
        pass

    def describe(self) -> str:
        return "smtp-sink alone; the generator's ceiling"


def postfix_version() -> str:
    try:
        out = subprocess.run(
            [POSTCONF, "-d", "-h", "mail_version"], capture_output=True, text=True, check=True
        ).stdout.strip()
        return out
    except (OSError, subprocess.CalledProcessError):
        return "not installed"


class PostfixSubject(Subject):
    name = "b"
    label = "b postfix"
    queues = True

    def __init__(
        self, workdir: Path, sink_port: int, process_limit: int, extra: dict[str, str]
    ) -> None:
        self.dir = workdir / "postfix"
        self.etc = self.dir / "etc"
        self.sink_port = sink_port
        self.process_limit = process_limit
        self.extra = extra
        self.port = free_port()
        self.main_cf: dict[str, str] = {}

    def _postconf(self, *args: str) -> None:
        subprocess.run([POSTCONF, "-c", str(self.etc), *args], check=True, capture_output=True)

    def start(self) -> None:
        etc, queue, data = self.etc, self.dir / "queue", self.dir / "data"
        for d in (etc, queue, data):
            d.mkdir(parents=True, exist_ok=True)
        for d in (self.dir.parent, self.dir):  # postfix must traverse to its queue
            d.chmod(0o755)
        shutil.chown(data, "postfix", "postfix")
        shutil.copy("/etc/postfix/dynamicmaps.cf", etc / "dynamicmaps.cf")
        master = Path("/etc/postfix/master.cf").read_text()
        master, n = re.subn(
            r"^smtp\s+inet\s.*$",
            f"127.0.0.1:{self.port} inet n - n - - smtpd",
            master,
            count=1,
            flags=re.MULTILINE,
        )
        if n != 1:
            raise RuntimeError("no 'smtp inet' line in /etc/postfix/master.cf")
        (etc / "master.cf").write_text(master)
        (etc / "transport").write_text(f"*  smtp:[127.0.0.1]:{self.sink_port}\n")
        self.main_cf = {
            "compatibility_level": "3.6",
            "queue_directory": str(queue),
            "data_directory": str(data),
            "myhostname": "relay.bench.test",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mydestination": "",
            "local_recipient_maps": "",
            "alias_maps": "",
            "alias_database": "",
            "relayhost": "",
            "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "smtpd_client_restrictions": "permit_mynetworks, reject",
            "transport_maps": f"texthash:{etc}/transport",
            "maillog_file": f"{self.dir}/maillog",
            "maillog_file_prefixes": str(self.dir),
            "default_process_limit": str(self.process_limit),
            "smtpd_client_connection_count_limit": "0",
            "smtpd_client_connection_rate_limit": "0",
            "in_flow_delay": "0",
            "message_size_limit": str(50 * 1024 * 1024),
            # No DNS on this machine kind: the sandbox resolver drops ~1% of queries, so every
            # ~100th PTR lookup of a 127.0.x.y client costs a 5 s resolver timeout. A real
            # appliance has a caching resolver; here the lookup is switched off.
            "smtpd_peername_lookup": "no",
            "smtpd_tls_security_level": "none",
            "smtp_tls_security_level": "none",
            "biff": "no",
            "append_dot_mydomain": "no",
            **self.extra,
        }
        (etc / "main.cf").write_text(
            "".join(f"{k} = {v}\n" for k, v in self.main_cf.items())
        )
        self._postconf("-F", "*/*/chroot = n")
        proc = subprocess.run(
            [POSTFIX, "-c", str(etc), "start"], capture_output=True, text=True, timeout=60
        )
        if proc.returncode != 0:
            log = self.dir / "maillog"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"postfix start failed: {proc.stderr.strip()}\n{tail}")
        pidfile = queue / "pid" / "master.pid"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                self.root_pid = int(pidfile.read_text().strip())
                break
            time.sleep(0.05)
        if not self.root_pid:
            raise RuntimeError(f"postfix did not write {pidfile}")
        wait_for_banner(self.port, 30, lambda: pid_alive(self.root_pid))

    def queue_count(self) -> int:
        n = 0
        for sub in ("maildrop", "incoming", "active", "deferred", "hold"):
            for _root, _dirs, files in os.walk(self.dir / "queue" / sub):
                n += len(files)
        return n

    def deferred(self) -> int:
        return sum(len(f) for _r, _d, f in os.walk(self.dir / "queue" / "deferred"))

    def stop(self) -> None:
        if not self.root_pid:
            return
        subprocess.run(
            [POSTFIX, "-c", str(self.etc), "stop"], capture_output=True, timeout=60, check=False
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and pid_alive(self.root_pid):
            time.sleep(0.1)
        if pid_alive(self.root_pid):
            kill_tree(self.root_pid)

    def describe(self) -> str:
        return (
            f"Postfix {postfix_version()}, default_process_limit={self.process_limit}"
            + "".join(f", {k}={v}" for k, v in self.extra.items())
        )


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def postwall_available(python: str) -> tuple[bool, str]:
    """Whether ``python -m appliance serve`` exists yet (the lead is writing it)."""
    if not (REPO / "appliance" / "__main__.py").exists():
        return False, f"{REPO}/appliance/__main__.py does not exist yet"
    try:
        proc = subprocess.run(
            [python, "-m", "appliance", "serve", "--help"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            env=_postwall_env(),
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"python -m appliance serve --help: {exc}"
    if proc.returncode != 0:
        return False, "python -m appliance serve --help failed: " + (
            proc.stderr.strip().splitlines() or ["?"]
        )[-1]
    return True, ""


def _postwall_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def validate_postwall_config(cfg: dict[str, Any]) -> str | None:
    """Validate against appliance.config.schema when importable; return an error text."""
    if importlib.util.find_spec("appliance") is None:
        sys.path.insert(0, str(REPO))
    try:
        from appliance.config.schema import Config  # type: ignore[import-not-found]
    except Exception:  # schema not importable: let the proxy itself judge the file
        return None
    try:
        Config.model_validate(cfg)
    except Exception as exc:
        return str(exc)
    return None


class NetworkServices:
    """The real NSD (serving NETWORK_ZONES) and clamd (test signatures) that the `network`
    filter set asks; started once on first use, stopped at exit (tests/support starts
    them the same way for the integration tests)."""

    _instance: NetworkServices | None = None

    def __init__(self) -> None:
        if str(REPO) not in sys.path:
            sys.path.insert(0, str(REPO))
        from tests.support.clamd import ClamdInstance
        from tests.support.dns_server import AuthoritativeDNS

        self.dns = AuthoritativeDNS(ttl=3600)
        self.dns.set_zones(NETWORK_ZONES)
        self.clamd = ClamdInstance()
        try:
            self.dns.start()
            self.clamd.start()
        except Exception:
            self.stop()
            raise
        log(f"network set: NSD on {self.dns.nameserver} (pid {self.dns.pid}), "
            f"clamd on {self.clamd.address} (pid {self.clamd.pid})")

    @classmethod
    def get(cls) -> NetworkServices:
        if cls._instance is None:
            cls._instance = cls()
            atexit.register(cls._instance.stop)
        return cls._instance

    def stop(self) -> None:
        for service in (self.clamd, self.dns):
            with contextlib.suppress(Exception):
                service.cleanup()


class PostwallSubject(Subject):
    name = "c"

    def __init__(
        self,
        workdir: Path,
        sink_port: int,
        workers: int,
        filter_set: str,
        python: str,
        label: str = "c postwall",
    ) -> None:
        self.dir = workdir / f"postwall-{filter_set}-{free_port()}"
        self.sink_port = sink_port  # its downstream
        self.workers = workers
        self.filter_set = filter_set
        self.python = python
        suffix = "" if filter_set == "default" else f" +{filter_set}"
        self.label = f"{label} w{workers}{suffix}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.config: dict[str, Any] = {}

    def build_config(self) -> dict[str, Any]:
        self.port = free_port()
        cfg = deep_merge(
            POSTWALL_BASE_CONFIG,
            {
                "listen": {
                    "inbound": f"127.0.0.1:{self.port}",
                    "relay": f"127.0.0.1:{free_port()}",
                },
                "downstream": {"host": "127.0.0.1", "port": self.sink_port, "timeout": 30},
                "data_dir": str(self.dir / "data"),
                "metrics": {"listen": f"127.0.0.1:{free_port()}"},
            },
        )
        cfg = deep_merge(cfg, POSTWALL_FILTER_SETS[self.filter_set])
        if self.filter_set == "network":
            services = NetworkServices.get()
            cfg = deep_merge(cfg, {
                "dns": {"nameservers": [services.dns.nameserver]},
                "filters": {"clamav": {"address": services.clamd.address}},
            })
        return cfg

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "data").mkdir(exist_ok=True)
        self.config = self.build_config()
        problem = validate_postwall_config(self.config)
        if problem:
            raise RuntimeError(f"the benchmark's Postwall config does not validate:\n{problem}")
        cfg_file = self.dir / "postwall.yml"
        try:
            import yaml

            cfg_file.write_text(yaml.safe_dump(self.config, sort_keys=False))
        except ImportError:  # JSON is YAML too
            cfg_file.write_text(json.dumps(self.config, indent=2))
        self.log = self.dir / "postwall.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    self.python, "-m", "appliance", "serve",
                    "--config", str(cfg_file), "--workers", str(self.workers),
                ],
                cwd=REPO,
                env=_postwall_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.root_pid = self.proc.pid
        try:
            wait_for_banner(
                self.port, 60, lambda: self.proc is not None and self.proc.poll() is None
            )
        except RuntimeError as exc:
            self.stop()
            tail = self.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{exc}\n--- {self.log} (tail) ---\n{tail}") from exc

    def probe(self) -> list[str]:
        """Run FILTER_SET_PROBES for this filter set; one line per probe."""
        import smtplib

        out = []
        for desc, mail_from, rcpt, want in FILTER_SET_PROBES.get(self.filter_set, []):
            code, where = 0, ""
            try:
                with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as smtp:
                    smtp.ehlo(CLIENT_HELO)
                    where = "mail"
                    code, _ = smtp.mail(mail_from)
                    if code < 400:
                        where = "rcpt"
                        code, _ = smtp.rcpt(rcpt)
                    if code < 400:
                        where = "data"
                        code, _ = smtp.data(b"Subject: probe\r\n\r\nprobe\r\n")
            except smtplib.SMTPException as exc:
                code, where = getattr(exc, "smtp_code", -1), "session"
            except OSError as exc:
                out.append(f"⚠ probe '{desc}': {exc}")
                continue
            mark = "ok" if str(code).startswith(want) else "⚠ UNEXPECTED"
            out.append(f"{mark}: probe '{desc}': {code} at {where} (want {want}xx)")
        return out

    def log_problems(self) -> list[str]:
        """Error lines in the proxy's own output (tracebacks, ERROR/CRITICAL)."""
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return []
        bad = [ln for ln in lines if re.search(r"Traceback|\bERROR\b|\bCRITICAL\b", ln)]
        if not bad:
            return []
        return [f"⚠ {len(bad)} error line(s) in {self.log.name}, first: {bad[0][:200]}"]

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                kill_tree(self.proc.pid)
                self.proc.wait()
        # workers that outlived their parent were re-parented: they are gone from our tree;
        # kill any left in the parent's process group (start_new_session made it ours)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc = None

    def describe(self) -> str:
        return f"python -m appliance serve --workers {self.workers}, filters: {self.filter_set}"


class ChainSubject(Subject):
    """d: the real appliance: Postwall in front of a Postfix relay in front of the sink."""

    name = "d"
    queues = True

    def __init__(self, postfix: PostfixSubject, make_postwall: Callable[[int], Subject]) -> None:
        self.postfix = postfix
        self.postwall = make_postwall(postfix.port)
        self.label = self.postwall.label + " > postfix"

    def roots(self) -> list[int]:
        return self.postwall.roots() + self.postfix.roots()

    def deferred(self) -> int:
        return self.postfix.deferred()

    def start(self) -> None:
        self.postfix.start()
        try:
            self.postwall.start()
        except Exception:
            self.postfix.stop()
            raise
        self.port = self.postwall.port
        self.root_pid = self.postwall.root_pid

    def stop(self) -> None:
        self.postwall.stop()
        self.postfix.stop()

    def describe(self) -> str:
        return f"{self.postwall.describe()}; downstream {self.postfix.describe()}"


# =======================================================================================
# Running cells
# =======================================================================================


@dataclass
class Cell:
    subject: str
    size: int
    conc: int
    msgs: int = 0
    rate: float = 0.0
    p50: float = 0.0
    p99: float = 0.0
    session_p50: float = 0.0
    session_p99: float = 0.0
    peak_rss_mb: float = 0.0
    peak_pss_mb: float = 0.0
    peak_procs: int = 0
    sampler_cpu_pct: float = 0.0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)
    window_s: float = 0.0
    subject_cpu_pct: float = 0.0
    gen_cpu_pct: float = 0.0
    sink_cpu_pct: float = 0.0
    other_cpu_pct: float = 0.0
    ok_total: int = 0
    sink_got: int = 0
    undelivered: int = 0
    drain_s: float | None = None
    end_to_end_rate: float | None = None
    deferred: int = 0
    note: str = ""


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


def machine_busy_pct(seconds: float = 1.0) -> float:
    """Busy CPU of the whole machine over a short sample, % of one core."""
    b0, t0 = machine_busy_s(), time.monotonic()
    time.sleep(seconds)
    return 100.0 * (machine_busy_s() - b0) / (time.monotonic() - t0)


def wait_until_idle(max_wait: float, threshold: float = 15.0) -> float:
    """Wait (up to max_wait s) until the machine is nearly idle; return the last busy %."""
    deadline = time.monotonic() + max_wait
    busy = machine_busy_pct(0.5)
    while busy > threshold and time.monotonic() < deadline:
        busy = machine_busy_pct(0.5)
    return busy


def run_cell(
    gen: LoadGenerator,
    subject: Subject,
    sink: Sink,
    size: int,
    conc: int,
    args: argparse.Namespace,
) -> Cell:
    procs = max(1, min(len(gen.conns), conc))
    slots: list[list[int]] = [[] for _ in range(procs)]
    for s in range(conc):
        slots[s % procs].append(s)
    if args.wait_idle > 0:
        busy = wait_until_idle(args.wait_idle)
        if busy > 15.0:
            log(f"   (machine still {busy:.0f}% busy after waiting {args.wait_idle:g} s)")
    sampler = TreeSampler(subject.roots(), args.rss_interval)
    sampler.reset()
    sampler.start()
    sink_before = sink.received()
    start_at = time.monotonic() + 0.3
    measure_start = start_at + args.warmup
    jobs = []
    for i in range(procs):
        share = None
        if args.messages is not None:
            share = args.messages // procs + (1 if i < args.messages % procs else 0)
        jobs.append(
            GenJob(
                host="127.0.0.1",
                port=subject.port,
                size=size,
                slots=slots[i],
                source_ips=args.source_ips,
                msgs_per_conn=args.msgs_per_conn,
                start_at=start_at,
                warmup=args.warmup,
                duration=None if args.messages is not None else args.duration,
                messages=share,
                timeout=args.timeout,
            )
        )
    gen.submit(jobs)
    time.sleep(max(0.0, measure_start - time.monotonic()))
    roots = {
        "subject": subject.roots(),
        "sink": [] if sink.proc.pid in subject.roots() else [sink.proc.pid],
        "gen": [p.pid for p in gen.procs if p.pid is not None],
    }
    cpu0, t_cpu0 = cpu_snapshot(roots), time.monotonic()
    if args.messages is None:
        time.sleep(max(0.0, measure_start + args.duration - time.monotonic()))
        cpu1, t_cpu1 = cpu_snapshot(roots), time.monotonic()
        results = gen.collect(procs)
    else:
        results = gen.collect(procs)
        cpu1, t_cpu1 = cpu_snapshot(roots), time.monotonic()
    load_end = time.monotonic()
    sampler.stop()

    cell = Cell(subject=subject.label, size=size, conc=conc)
    tx: list[float] = []
    sess: list[float] = []
    kinds: Counter[str] = Counter()
    samples: list[str] = []
    for r in results:
        cell.msgs += r.ok
        cell.ok_total += r.ok_total
        tx.extend(r.tx_ms)
        sess.extend(r.session_ms)
        kinds.update(r.errors)
        samples.extend(r.error_samples)
    if args.messages is None:
        cell.window_s = args.duration
    else:
        last = max((r.last_end for r in results), default=measure_start)
        cell.window_s = max(last - measure_start, 1e-9)
    cell.rate = cell.msgs / cell.window_s if cell.window_s else 0.0
    cell.p50, cell.p99 = percentile(tx, 0.50), percentile(tx, 0.99)
    cell.session_p50, cell.session_p99 = percentile(sess, 0.50), percentile(sess, 0.99)
    cell.errors = sum(kinds.values())
    cell.error_kinds = dict(kinds.most_common())
    cell.error_samples = sorted(set(samples))[:5]
    cell.peak_rss_mb = sampler.peak_rss / 1e6
    cell.peak_pss_mb = sampler.peak_pss / 1e6
    cell.peak_procs = sampler.peak_procs
    cell.sampler_cpu_pct = 100.0 * sampler.own_cpu_s / max(load_end - start_at, 1e-9)
    pct = {k: 100.0 * (cpu1[k] - cpu0[k]) / max(t_cpu1 - t_cpu0, 1e-9) for k in cpu0}
    cell.subject_cpu_pct = pct["subject"]
    cell.gen_cpu_pct = pct["gen"]
    cell.sink_cpu_pct = pct["sink"]
    cell.other_cpu_pct = max(
        pct["machine"] - pct["subject"] - pct["sink"] - pct["gen"] - pct["self"], 0.0
    )

    # Did everything acknowledged arrive at the sink? (For Postfix: wait for the queue.)
    wait = args.drain_timeout if subject.queues else 5.0
    deadline = time.monotonic() + wait
    got = sink.received() - sink_before
    while got < cell.ok_total and time.monotonic() < deadline:
        time.sleep(0.05)
        got = sink.received() - sink_before
    cell.sink_got = got
    cell.undelivered = max(cell.ok_total - got, 0)
    if subject.queues:
        t_drained = time.monotonic()
        cell.drain_s = max(t_drained - load_end, 0.0)
        if cell.undelivered == 0:
            cell.end_to_end_rate = cell.ok_total / max(t_drained - start_at, 1e-9)
        cell.deferred = subject.deferred()
    return cell


# =======================================================================================
# Output
# =======================================================================================


def fmt_size(n: int) -> str:
    return f"{n // 1024} KiB" if n % 1024 == 0 else f"{n} B"


def errors_text(cell: Cell) -> str:
    parts = []
    if cell.errors:
        kinds = ", ".join(f"{k}: {v}" for k, v in list(cell.error_kinds.items())[:3])
        parts.append(f"⚠ {cell.errors} ({kinds})")
    if cell.undelivered:
        parts.append(f"⚠ {cell.undelivered} acked but not at sink")
    if cell.deferred:
        parts.append(f"⚠ {cell.deferred} deferred")
    if cell.note:
        parts.append(f"⚠ {cell.note}")
    return "; ".join(parts) if parts else "0"


def render(
    cells: list[Cell], meta: dict[str, Any], skipped: list[str], subjects: list[str]
) -> str:
    lines = [
        "# Relay throughput",
        "",
        f"Run {meta['date']} on {meta['host']}: nproc {meta['nproc']} ({meta['cpu']}), "
        f"{meta['mem_gb']:.0f} GB RAM, Linux {meta['kernel']}, Python {meta['python']} "
        f"({meta['event_loop']}), Postfix {meta['postfix']}. Machine busy before the run: "
        f"{meta['busy_before_pct']:.0f}% of one core.",
        "",
        f"Load: {meta['load']}",
        "",
        "| subject | size | conc | msgs | msg/s | p50 ms | p99 ms | peak RSS MB | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for c in cells:
        mark = " ⚠" if (c.errors or c.undelivered or c.deferred or c.note) else ""
        lines.append(
            f"| {c.subject} | {fmt_size(c.size)} | {c.conc} | {c.msgs} | {c.rate:.0f}{mark} | "
            f"{c.p50:.1f} | {c.p99:.1f} | {c.peak_rss_mb:.1f} | {errors_text(c)} |"
        )
    lines += [
        "",
        "msg/s: messages acknowledged with 250 after DATA per second of the measurement "
        "window; p50/p99: latency from MAIL FROM to that 250; peak RSS: summed RSS of the "
        "subject's process tree (100 ms samples). ⚠ marks a cell with failures.",
        "",
        "## Details",
        "",
        "| subject | size | conc | subject CPU % | generator CPU % | sink CPU % "
        "| other CPU % | session p50/p99 ms "
        "| peak procs | peak PSS MB | drain s | end-to-end msg/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in cells:
        drain = f"{c.drain_s:.1f}" if c.drain_s is not None else "-"
        e2e = f"{c.end_to_end_rate:.0f}" if c.end_to_end_rate is not None else "-"
        lines.append(
            f"| {c.subject} | {fmt_size(c.size)} | {c.conc} | {c.subject_cpu_pct:.0f} | "
            f"{c.gen_cpu_pct:.0f} | {c.sink_cpu_pct:.0f} | {c.other_cpu_pct:.0f} | "
            f"{c.session_p50:.1f} / {c.session_p99:.1f} | "
            f"{c.peak_procs} | {c.peak_pss_mb:.1f} | {drain} | {e2e} |"
        )
    lines += [
        "",
        "CPU % is of one core (200 = both cores busy), over the measurement window; other = "
        "the rest of the machine (anything else running skews the cell: rerun when it is "
        "high). Session = connect to 221 after QUIT. "
        "PSS (sampled every ~1 s) splits shared pages between processes: the fair memory "
        "figure for multi-process subjects. "
        "drain = seconds after the load stopped until the sink had every acknowledged "
        "message (Postfix queues); end-to-end = acknowledged messages / (load start to "
        "drained).",
    ]
    ceiling = {}
    for c in cells:
        if c.subject.startswith("a "):
            ceiling[c.size] = max(ceiling.get(c.size, 0.0), c.rate)
    if ceiling:
        lines += [
            "",
            "Generator ceiling (best baseline cell): "
            + ", ".join(f"{fmt_size(s)}: {r:.0f} msg/s" for s, r in sorted(ceiling.items())),
        ]
        close = [
            c for c in cells
            if not c.subject.startswith("a ") and c.rate > 0.5 * ceiling.get(c.size, 1e18)
        ]
        if close:
            lines.append(
                "⚠ Some subjects reach more than half the generator's ceiling ("
                + ", ".join(f"{c.subject} {fmt_size(c.size)} c{c.conc}" for c in close)
                + "): the generator may limit them; try more --gen-procs or --msgs-per-conn."
            )
        else:
            lines.append("Every subject stays below half of the generator's ceiling.")
    lines += ["", "Subjects:"] + [f"- {s}" for s in subjects]
    samples = [(c, s) for c in cells for s in c.error_samples]
    if samples:
        lines += ["", "Error samples:"]
        lines += [f"- {c.subject} {fmt_size(c.size)} c{c.conc}: `{s}`" for c, s in samples[:20]]
    if skipped:
        lines += ["", "Skipped:"] + [f"- {s}" for s in skipped]
    lines += ["", f"Command: `{meta['command']}`", ""]
    return "\n".join(lines)


def machine_meta(args: argparse.Namespace) -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        import uvloop  # type: ignore[import-not-found]

        loop = f"uvloop {uvloop.__version__}"
    except ImportError:
        loop = "asyncio"
    mode = (
        f"{args.messages} messages per cell after a {args.warmup:g} s warm-up"
        if args.messages is not None
        else f"{args.duration:g} s per cell after a {args.warmup:g} s warm-up"
    )
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "host": platform.node(),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "mem_gb": os.sysconf("SC_PHYS_PAGES") * PAGE / 2**30,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "event_loop": loop,
        "postfix": postfix_version(),
        "load": (
            f"{mode}; {args.msgs_per_conn} message(s) per SMTP session, no pipelining; "
            f"{args.gen_procs} generator process(es) ({loop}); "
            f"clients spread over {args.source_ips} source addresses in 127.0.0.0/8; "
            "sink: smtp-sink"
            + (f"; everything started with nice {args.nice:+d}" if args.nice else "")
            + "."
        ),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }


# =======================================================================================
# Main
# =======================================================================================


def parse_size(text: str) -> int:
    text = text.strip().lower().removesuffix("b").removesuffix("i")
    mult = 1
    if text.endswith("k"):
        mult, text = 1024, text[:-1]
    elif text.endswith("m"):
        mult, text = 1024 * 1024, text[:-1]
    return int(float(text) * mult)


def csv(kind: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    def parse(text: str) -> list[Any]:
        return [kind(part) for part in text.split(",") if part.strip()]

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ncpu = os.cpu_count() or 1
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="2 s cells with a 0.5 s warm-up")
    p.add_argument("--sizes", type=csv(parse_size), default=[4096, 102400],
                   help="message sizes, e.g. 4k,100k (default: 4k,100k)")
    p.add_argument("--concurrency", type=csv(int), default=[1, 20, 200],
                   help="concurrent sessions (default: 1,20,200)")
    p.add_argument("--messages", type=int, default=None,
                   help="a fixed number of messages per cell instead of a fixed duration")
    p.add_argument("--duration", type=float, default=6.0,
                   help="measured seconds per cell (default 6)")
    p.add_argument("--warmup", type=float, default=1.0,
                   help="unmeasured seconds of load before each cell (default 1)")
    p.add_argument("--workers", type=int, default=ncpu,
                   help=f"Postwall worker processes (default: nproc = {ncpu})")
    p.add_argument("--only", type=csv(str), default=["a", "b", "c"],
                   help="subjects to run (default a,b,c): a (sink baseline), b (postfix), "
                   "c (postwall); d (postwall > postfix > sink, the whole appliance) on request")
    p.add_argument("--filters", type=csv(str), default=["default"],
                   help="Postwall filter set(s), one run each: " + ", ".join(POSTWALL_FILTER_SETS)
                   + " (default: default; 'every' = EVERY_FILTER_CONFIG in this script)")
    p.add_argument("--gen-procs", type=int, default=ncpu,
                   help=f"load generator processes (default: nproc = {ncpu})")
    p.add_argument("--msgs-per-conn", type=int, default=1,
                   help="messages per SMTP session (default 1: one session per message)")
    p.add_argument("--source-ips", type=int, default=200,
                   help="spread client slots over this many 127.0.x.y addresses (1: 127.0.0.1)")
    p.add_argument("--timeout", type=float, default=60.0, help="SMTP session timeout (s)")
    p.add_argument("--drain-timeout", type=float, default=120.0,
                   help="how long to wait for Postfix's queue to drain after a cell (s)")
    p.add_argument("--postfix-process-limit", type=int, default=None,
                   help="Postfix default_process_limit (default: max concurrency + 50)")
    p.add_argument("--postfix-set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra main.cf setting for the Postfix subject (repeatable)")
    p.add_argument("--python", default=sys.executable,
                   help="interpreter that runs 'python -m appliance serve' (default: this one)")
    p.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                   help="before each cell wait up to this long for the rest of the machine "
                   "to be idle (a shared machine skews results; see 'other CPU %%')")
    p.add_argument("--nice", type=int, default=0,
                   help="renice the benchmark and everything it starts (inherited by the "
                   "generator, sink, Postfix and Postwall); e.g. -5 as root so that other work "
                   "on a shared machine disturbs the cells less")
    p.add_argument("--rss-interval", type=float, default=0.1, help="RSS sampling interval (s)")
    p.add_argument("--output", type=Path, default=RESULTS_DIR / "latest.md",
                   help="Markdown output (default benchmarks/results/latest.md; JSON beside it)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.warmup = 2.0, 0.5
    unknown = set(args.only) - {"a", "b", "c", "d"}
    if unknown:
        p.error(f"--only: unknown subject(s) {sorted(unknown)}; use a, b, c, d")
    bad = set(args.filters) - set(POSTWALL_FILTER_SETS)
    if bad:
        p.error(f"--filters: unknown set(s) {sorted(bad)}")
    for item in args.postfix_set:
        if "=" not in item:
            p.error(f"--postfix-set wants KEY=VALUE, got {item!r}")
    if args.postfix_process_limit is None:
        args.postfix_process_limit = max(max(args.concurrency) + 50, 100)
    args.gen_procs = max(1, args.gen_procs)
    return args


@contextlib.contextmanager
def workdir(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="postwall-bench-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        if keep:
            print(f"kept {path}", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # a TERM must still stop Postfix/Postwall/smtp-sink (the finally blocks below)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if not Path(SMTP_SINK).exists() or not Path(POSTFIX).exists():
        log(
            "Postfix is not installed (need /usr/sbin/smtp-sink and /usr/sbin/postfix).\n"
            "Install it without starting a system instance, e.g. scripts/install-test-deps, or:\n"
            "  printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d; "
            "chmod 755 /usr/sbin/policy-rc.d\n"
            "  DEBIAN_FRONTEND=noninteractive apt-get install -y postfix; "
            "rm /usr/sbin/policy-rc.d"
        )
        return 2
    if os.geteuid() != 0:
        log("run as root: the throwaway Postfix and smtp-sink need to drop privileges")
        return 2
    if args.nice:
        os.nice(args.nice)  # before anything is started: children inherit it
    extra_pf = dict(POSTFIX_EXTRA_MAIN_CF)
    extra_pf.update(item.split("=", 1) for item in args.postfix_set)
    extra_pf = {k.strip(): v.strip() for k, v in extra_pf.items()}

    meta = machine_meta(args)
    meta["busy_before_pct"] = round(machine_busy_pct(1.0), 1)
    if meta["busy_before_pct"] > 15.0:
        log(
            f"warning: the machine is already {meta['busy_before_pct']:.0f}% busy (of one core) "
            "before the benchmark: results will be skewed (see 'other CPU %'; --wait-idle)"
        )
    cells: list[Cell] = []
    skipped: list[str] = []
    subject_notes: list[str] = []
    started = time.monotonic()
    with workdir(args.keep) as tmp:
        sink = Sink(tmp, backlog=max(1000, 2 * max(args.concurrency)))
        gen = LoadGenerator(args.gen_procs)
        current: Subject | None = None
        try:
            plan: list[Callable[[], Subject]] = []
            if "a" in args.only:
                plan.append(lambda: SinkSubject(sink))
            if "b" in args.only:
                plan.append(
                    lambda: PostfixSubject(tmp, sink.port, args.postfix_process_limit, extra_pf)
                )
            wanted = [x for x in ("c", "d") if x in args.only]
            ok, why = postwall_available(args.python) if wanted else (False, "")
            for which in wanted:
                if not ok:
                    skipped.append(f"{which} postwall: {why}")
                    log(f"skipping {which}: {why}")
                    continue
                for fset in args.filters:
                    if which == "c":
                        plan.append(
                            lambda fset=fset: PostwallSubject(
                                tmp, sink.port, args.workers, fset, args.python
                            )
                        )
                    else:
                        plan.append(
                            lambda fset=fset: ChainSubject(
                                PostfixSubject(
                                    tmp / f"chain-{fset}", sink.port,
                                    args.postfix_process_limit, extra_pf,
                                ),
                                lambda port, fset=fset: PostwallSubject(
                                    tmp, port, args.workers, fset, args.python, "d postwall"
                                ),
                            )
                        )
            for make in plan:
                subject = make()
                current = subject
                log(f"== starting {subject.label}")
                try:
                    subject.start()
                except Exception as exc:
                    skipped.append(f"{subject.label}: failed to start: {exc}".splitlines()[0])
                    log(f"{subject.label} failed to start: {exc}")
                    subject.stop()
                    current = None
                    continue
                subject_notes.append(f"{subject.label}: {subject.describe()}")
                postwall = subject.postwall if isinstance(subject, ChainSubject) else subject
                if isinstance(postwall, PostwallSubject):
                    for line in postwall.probe():
                        log(f"   {line}")
                        subject_notes.append(f"{subject.label}: {line}")
                for size in args.sizes:
                    for conc in args.concurrency:
                        cell = run_cell(gen, subject, sink, size, conc, args)
                        cells.append(cell)
                        log(
                            f"   {subject.label:24} {fmt_size(size):>8} c{conc:<4} "
                            f"{cell.rate:8.0f} msg/s  p50 {cell.p50:7.1f} ms  "
                            f"p99 {cell.p99:7.1f} ms  rss {cell.peak_rss_mb:7.1f} MB  "
                            f"cpu {cell.subject_cpu_pct:4.0f}%  gen {cell.gen_cpu_pct:4.0f}%  "
                            f"other {cell.other_cpu_pct:3.0f}%  "
                            f"err {errors_text(cell)}"
                            + (f"  drain {cell.drain_s:.1f}s" if cell.drain_s is not None else "")
                        )
                subject.stop()
                current = None
                if isinstance(postwall, PostwallSubject):
                    subject_notes += [f"{subject.label}: {x}" for x in postwall.log_problems()]
        except KeyboardInterrupt:
            log("interrupted: writing what was measured")
        finally:
            if current is not None:
                current.stop()
            gen.close()
            sink.stop()

    meta["elapsed_s"] = round(time.monotonic() - started, 1)
    text = render(cells, meta, skipped, subject_notes)
    text += f"Whole run: {meta['elapsed_s']} s.\n"
    print(text)
    out: Path = args.output
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(
        json.dumps(
            {"meta": meta, "skipped": skipped, "subjects": subject_notes,
             "cells": [asdict(c) for c in cells]},
            indent=1,
        )
        + "\n"
    )
    log(f"wrote {out} and {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
