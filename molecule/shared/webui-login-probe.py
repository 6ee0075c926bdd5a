#!/usr/bin/env python3
"""Log in to the web UI over HTTPS as a browser would and print what happened, as JSON,
for the Molecule verify playbooks (run on the target with ansible.builtin.script).

    PROBE_PASSWORD=... webui-login-probe.py --url https://127.0.0.1:8443
                       --cafile /etc/postwall/webui/selfsigned.crt [--username admin]

GET /login, take the CSRF token from the form, POST the credentials with the session
cookie and a same-origin Referer, follow the redirect. The certificate is verified
against --cafile (its host name is not: the probe connects to an address). Prints
{"login_status": ..., "final_url": ..., "forced_change": bool, "tls_version": ...}.
The password comes from the environment so that it is not on a command line.
"""

from __future__ import annotations

import argparse
import html.parser
import http.cookiejar
import json
import os
import socket
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request


class CSRFTokenParser(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.token: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "input" and values.get("name") == "csrf_token":
            self.token = values.get("value")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True, help="https://HOST:PORT")
    parser.add_argument("--cafile", required=True)
    parser.add_argument("--username", default="admin")
    args = parser.parse_args()
    if not args.url.startswith("https://"):
        parser.error("--url must be https://HOST:PORT")
    password = os.environ["PROBE_PASSWORD"]

    context = ssl.create_default_context(cafile=args.cafile)
    context.check_hostname = False
    opener = urllib.request.build_opener(
        urllib.request.HTTPSHandler(context=context),
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()),
    )
    login_url = args.url.rstrip("/") + "/login"
    with opener.open(login_url, timeout=30) as response:
        page = response.read().decode()
    token_parser = CSRFTokenParser()
    token_parser.feed(page)
    if not token_parser.token:
        print(json.dumps({"error": "no csrf_token in the login form"}))
        return 1
    form = urllib.parse.urlencode({
        "csrf_token": token_parser.token, "username": args.username,
        "password": password, "next": "",
    }).encode()
    request = urllib.request.Request(  # noqa: S310 - https only, checked above
        login_url, data=form, headers={"Referer": login_url})
    try:
        with opener.open(request, timeout=30) as response:
            body = response.read().decode()
            status, final_url = response.status, response.geturl()
    except urllib.error.HTTPError as exc:
        body, status, final_url = exc.read().decode(errors="replace"), exc.code, exc.geturl()
    address = urllib.parse.urlsplit(args.url)
    with (socket.create_connection((address.hostname, address.port or 443), timeout=30) as raw,
          context.wrap_socket(raw) as tls):
        tls_version = tls.version()
    print(json.dumps({
        "login_status": status,
        "final_url": final_url,
        "forced_change": "Change your password" in body and "Choose your own" in body,
        "tls_version": tls_version,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
