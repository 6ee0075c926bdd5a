"""A recording SMTP server: the stand-in for the organisation's internal mail server.

Run as its own process (tests/support/services.py starts it):

    python tests/support/recording_server.py --port 2525 --dir /tmp/rec [--parent-pid PID]

Every accepted message is written crash-safely (temporary file, fsync, rename) as
``DIR/<seq>.eml`` holding the exact octets received after dot-unstuffing
(``decode_data=False``), then ``DIR/<seq>.json`` with the envelope. The JSON file is the
commit marker: a reader that lists ``*.json`` only ever sees complete messages.

Optionally it knows a fixed set of mailboxes (``--mailbox ADDR``, repeatable): RCPT and
VRFY for any other address get ``550 5.1.1``, known ones ``250``/``252``, the way an
internal mail server answers a recipient callout; ``--tempfail-rcpt`` answers every RCPT
and VRFY with ``451 4.3.0`` instead. With ``--probe-log FILE`` each RCPT and VRFY is
appended to FILE as ``COMMAND address code``.

The server prints ``READY <port>`` on stdout once it listens, and exits on SIGTERM/SIGINT
or when ``--parent-pid`` is gone (so a killed test run leaves nothing behind).

Standard library and aiosmtpd only: this file must not import the project.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

DEFAULT_LINE_LENGTH_LIMIT = 1 << 20  # record what arrives, even over-long lines


class RecordingSMTP(SMTP):
    line_length_limit = DEFAULT_LINE_LENGTH_LIMIT


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Recorder:
    """aiosmtpd handler that stores every message and answers 250."""

    def __init__(
        self, directory: Path, mailboxes: frozenset[str] | None = None,
        tempfail_rcpt: bool = False, probe_log: Path | None = None,
    ) -> None:
        self.directory = directory
        self.mailboxes = mailboxes
        self.tempfail_rcpt = tempfail_rcpt
        self.probe_log = probe_log
        existing = [int(p.stem) for p in directory.glob("*.json") if p.stem.isdigit()]
        self.seq = max(existing, default=0)

    def _knows(self, command: str, address: str) -> str:
        if self.tempfail_rcpt:
            reply = "451 4.3.0 Mailbox lookup temporarily unavailable"
        elif self.mailboxes is None or address.lower() in self.mailboxes:
            reply = "252 2.0.0 <{0}>" if command == "VRFY" else "250 2.1.5 <{0}> OK"
        else:
            reply = "550 5.1.1 <{0}>: Recipient address rejected: User unknown"
        if self.probe_log is not None:
            with self.probe_log.open("a") as log:
                log.write(f"{command} {address} {reply[:3]}\n")
        return reply.format(address)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str,
        rcpt_options: list[str],
    ) -> str:
        reply = self._knows("RCPT", address)
        if reply.startswith("2"):
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
        return reply

    async def handle_VRFY(
        self, server: SMTP, session: Session, envelope: Envelope, address: str
    ) -> str:
        return self._knows("VRFY", address)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        self.seq += 1
        seq = self.seq
        now = time.time()
        peer = session.peer if isinstance(session.peer, tuple) else (str(session.peer), 0)
        meta: dict[str, Any] = {
            "seq": seq,
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "mail_options": list(envelope.mail_options),
            "rcpt_options": list(envelope.rcpt_options),
            "smtp_utf8": bool(envelope.smtp_utf8),
            "helo": session.host_name,
            "peer": [peer[0], peer[1]],
            "received_at": now,
            "received_at_iso": datetime.fromtimestamp(now, UTC).isoformat(),
            "size": len(content),
            "sha256": hashlib.sha256(content).hexdigest(),
        }
        name = f"{seq:06d}"
        _write_atomic(self.directory / f"{name}.eml", content)
        _write_atomic(
            self.directory / f"{name}.json",
            json.dumps(meta, indent=1, sort_keys=True).encode() + b"\n",
        )
        _fsync_dir(self.directory)
        return f"250 2.0.0 Ok: recorded as {name}"


async def _watch_parent(parent_pid: int, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            os.kill(parent_pid, 0)
        except ProcessLookupError:
            stop.set()
            return
        except PermissionError:
            pass
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=1.0)


async def serve(args: argparse.Namespace, directory: Path) -> None:
    mailboxes = frozenset(m.lower() for m in args.mailbox) if args.mailbox else None
    probe_log = Path(args.probe_log) if args.probe_log else None
    recorder = Recorder(directory, mailboxes, args.tempfail_rcpt, probe_log)
    loop = asyncio.get_running_loop()
    RecordingSMTP.line_length_limit = args.line_length_limit

    def factory() -> SMTP:
        return RecordingSMTP(
            recorder,
            data_size_limit=None,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=args.hostname,
            ident="Postwall test recorder",
            timeout=args.timeout,
        )

    server = await loop.create_server(factory, host=args.host, port=args.port, reuse_address=True)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    watcher = asyncio.create_task(_watch_parent(args.parent_pid, stop)) if args.parent_pid else None
    port = server.sockets[0].getsockname()[1]
    print(f"READY {port}", flush=True)
    try:
        await stop.wait()
    finally:
        server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), timeout=2.0)
        if watcher is not None:
            watcher.cancel()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="0 picks a free port")
    parser.add_argument("--dir", required=True, help="where <seq>.eml/<seq>.json are written")
    parser.add_argument("--hostname", default="recorder.postwall.test")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--line-length-limit", type=int, default=DEFAULT_LINE_LENGTH_LIMIT)
    parser.add_argument("--parent-pid", type=int, default=0, help="exit when it is gone")
    parser.add_argument("--mailbox", action="append", default=[],
                        help="a known mailbox; with any, other RCPT/VRFY get 550 5.1.1")
    parser.add_argument("--tempfail-rcpt", action="store_true",
                        help="answer every RCPT and VRFY with 451 4.3.0")
    parser.add_argument("--probe-log", help="append 'COMMAND address code' per RCPT/VRFY")
    args = parser.parse_args(argv)
    directory = Path(args.dir)
    directory.mkdir(parents=True, exist_ok=True)
    asyncio.run(serve(args, directory))
    return 0


if __name__ == "__main__":
    sys.exit(main())
