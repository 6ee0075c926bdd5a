#!/usr/bin/env python3
"""Send one message over SMTP and print what the server answered, as JSON, for the
Molecule verify playbooks (run on the target with ansible.builtin.script).

    smtp-probe.py --server 127.0.0.1:25 --sender a@example.org --rcpt b@example.test
                  [--subject S] [--body TEXT] [--eicar] [--smuggle] [--helo NAME]
                  [--source 127.0.0.N]

Prints {"stage": ..., "code": ..., "reply": ..., "features": {...}}: the stage is
"done" when the message was accepted, else the SMTP stage that was refused.
"""

from __future__ import annotations

import argparse
import json
import smtplib
import sys
import uuid

# The EICAR test file, built from two halves so that no scanner flags this script.
EICAR = "X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + "EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


def message(args: argparse.Namespace, marker: str) -> bytes:
    body = args.body or f"A clean test message.\r\nMarker: {marker}\r\n"
    if args.eicar:
        body = EICAR + "\r\n"
    text = (
        f"From: <{args.sender}>\r\nTo: <{args.rcpt[0]}>\r\nSubject: {args.subject}\r\n"
        f"Message-ID: <{marker}@probe.example>\r\nX-Probe-Marker: {marker}\r\n\r\n{body}"
    )
    return text.encode()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True, help="HOST:PORT")
    parser.add_argument("--sender", required=True)
    parser.add_argument("--rcpt", required=True, action="append")
    parser.add_argument("--subject", default="Molecule probe")
    parser.add_argument("--body")
    parser.add_argument("--helo", default="probe.example.org")
    parser.add_argument("--source", default="",
                        help="local address to send from (a 127.x address per test keeps "
                        "one test's reputation from affecting the next)")
    parser.add_argument("--eicar", action="store_true", help="the body is the EICAR test file")
    parser.add_argument("--smuggle", action="store_true",
                        help="hide a second message behind a bare-LF end of data")
    args = parser.parse_args()
    host, _, port = args.server.rpartition(":")
    marker = uuid.uuid4().hex
    result = {"marker": marker, "stage": "connect", "code": None, "reply": ""}
    try:
        with smtplib.SMTP(host, int(port), local_hostname=args.helo, timeout=60,
                          source_address=(args.source, 0) if args.source else None) as smtp:
            result["stage"] = "ehlo"
            code, reply = smtp.ehlo()
            result["features"] = smtp.esmtp_features
            if code != 250:
                raise smtplib.SMTPResponseException(code, reply)
            result["stage"] = "mail"
            code, reply = smtp.mail(args.sender)
            if code != 250:
                raise smtplib.SMTPResponseException(code, reply)
            for rcpt in args.rcpt:
                result["stage"] = "rcpt"
                code, reply = smtp.rcpt(rcpt)
                if code not in (250, 251):
                    raise smtplib.SMTPResponseException(code, reply)
            result["stage"] = "data"
            if args.smuggle:
                # A bare LF before the dot: a vulnerable server ends DATA there and
                # takes the rest as a second transaction.
                code, reply = smtp.docmd("DATA")
                if code != 354:
                    raise smtplib.SMTPResponseException(code, reply)
                smuggled = (
                    message(args, marker).rstrip(b"\r\n") + b"\r\n\n.\n"
                    b"MAIL FROM:<smuggled@example.org>\r\nRCPT TO:<" + args.rcpt[0].encode()
                    + b">\r\nDATA\r\nSubject: smuggled\r\n\r\nsmuggled\r\n.\r\n"
                )
                smtp.send(smuggled + b"\r\n.\r\n")
                code, reply = smtp.getreply()
            else:
                code, reply = smtp.data(message(args, marker))
            if code != 250:
                raise smtplib.SMTPResponseException(code, reply)
            result.update(stage="done", code=code, reply=reply.decode(errors="replace"))
    except smtplib.SMTPResponseException as exc:
        result.update(code=exc.smtp_code, reply=exc.smtp_error.decode(errors="replace"))
    except (OSError, smtplib.SMTPException) as exc:
        result.update(reply=f"{type(exc).__name__}: {exc}")
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
