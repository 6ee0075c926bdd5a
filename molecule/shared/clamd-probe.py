#!/usr/bin/env python3
"""Stream a sample to clamd (INSTREAM, as the proxy does) and print clamd's answer as
JSON, for the Molecule verify playbooks.

    clamd-probe.py --socket /run/clamav/clamd.ctl [--eicar]

Prints {"reply": "stream: OK"} or {"error": "PermissionError: ..."}.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys

# The EICAR test file, built from two halves so that no scanner flags this script.
EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--socket", required=True)
    parser.add_argument("--eicar", action="store_true")
    args = parser.parse_args()
    sample = EICAR if args.eicar else b"Subject: hello\r\n\r\nA clean sample.\r\n"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(60)
            sock.connect(args.socket)
            sock.sendall(b"zINSTREAM\0" + struct.pack("!L", len(sample)) + sample
                         + struct.pack("!L", 0))
            reply = b""
            while not reply.endswith(b"\0"):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
        json.dump({"reply": reply.rstrip(b"\0").decode(errors="replace")}, sys.stdout)
    except OSError as exc:
        json.dump({"error": f"{type(exc).__name__}: {exc}"}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
