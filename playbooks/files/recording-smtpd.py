#!/usr/bin/env python3
"""A recording SMTP server that stands in for the organisation's internal mail server in
the Molecule scenarios and the `scripts/install` demo.

It accepts every message and writes it to SPOOL as one file, the envelope first
(`X-Recorded-Mail-From:` and one `X-Recorded-Rcpt-To:` per recipient), then the message
exactly as received after dot-unstuffing. Standard library only, so it runs on a bare
Debian or Ubuntu host.

    recording-smtpd.py --listen 127.0.0.1:2526 --spool /var/lib/recording-smtpd/2526
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import time
from pathlib import Path

MAX_LINE = 1_000_000


class Session:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 spool: Path, sequence: itertools.count) -> None:
        self.reader, self.writer, self.spool, self.sequence = reader, writer, spool, sequence
        self.mail_from: bytes | None = None
        self.rcpt_to: list[bytes] = []

    async def reply(self, text: str) -> None:
        self.writer.write(text.encode() + b"\r\n")
        await self.writer.drain()

    async def run(self) -> None:
        await self.reply("220 recorder ESMTP")
        while line := await self.reader.readline():
            command = line.rstrip(b"\r\n")
            verb = command[:4].upper()
            if verb == b"EHLO":
                await self.reply(
                    "250-recorder\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE 209715200"
                )
            elif verb == b"HELO":
                await self.reply("250 recorder")
            elif verb == b"MAIL":
                self.mail_from, self.rcpt_to = command[10:].strip(), []
                await self.reply("250 2.1.0 Ok")
            elif verb == b"RCPT":
                if self.mail_from is None:
                    await self.reply("503 5.5.1 MAIL first")
                    continue
                self.rcpt_to.append(command[8:].strip())
                await self.reply("250 2.1.5 Ok")
            elif verb == b"DATA":
                if not self.rcpt_to:
                    await self.reply("503 5.5.1 RCPT first")
                    continue
                await self.reply("354 End data with <CR><LF>.<CR><LF>")
                name = await self.receive()
                self.mail_from, self.rcpt_to = None, []
                await self.reply(f"250 2.0.0 Ok: recorded as {name}")
            elif verb in (b"RSET", b"NOOP"):
                if verb == b"RSET":
                    self.mail_from, self.rcpt_to = None, []
                await self.reply("250 2.0.0 Ok")
            elif verb == b"QUIT":
                await self.reply("221 2.0.0 Bye")
                break
            else:
                await self.reply("502 5.5.2 Command not implemented")
        self.writer.close()

    async def receive(self) -> str:
        lines = []
        while True:
            line = await self.reader.readline()
            if not line or line == b".\r\n":
                break
            lines.append(line[1:] if line.startswith(b".") else line)
        envelope = [b"X-Recorded-Mail-From: " + (self.mail_from or b"") + b"\r\n"]
        envelope += [b"X-Recorded-Rcpt-To: " + rcpt + b"\r\n" for rcpt in self.rcpt_to]
        name = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{next(self.sequence)}.eml"
        temporary = self.spool / f".{name}.tmp"
        with temporary.open("wb") as out:
            out.writelines(envelope + lines)
            out.flush()
            os.fsync(out.fileno())
        temporary.rename(self.spool / name)
        return name


async def serve(host: str, port: int, spool: Path) -> None:
    sequence = itertools.count(1)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await Session(reader, writer, spool, sequence).run()

    server = await asyncio.start_server(handle, host, port, limit=MAX_LINE)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="ADDRESS:PORT to listen on")
    parser.add_argument("--spool", required=True, type=Path, help="directory for the messages")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    args.spool.mkdir(parents=True, exist_ok=True)
    asyncio.run(serve(host, int(port), args.spool))


if __name__ == "__main__":
    main()
