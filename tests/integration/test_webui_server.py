"""`postwall webui serve` as the process the appliance runs: HTTPS only, TLS 1.2 or newer,
the security headers on the wire, and a clean stop on SIGTERM."""

from __future__ import annotations

import http.client
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.webui import WebUIProcess
from tests.webui.conftest import write_config


@pytest.fixture
def server(tmp_path: Path) -> Iterator[WebUIProcess]:
    config = tmp_path / "postwall.yml"
    write_config(config, tmp_path / "data")
    process = WebUIProcess(config, tmp_path)
    process.start()
    yield process
    process.stop()


def client_context(**settings: object) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the throwaway self-signed certificate
    for name, value in settings.items():
        setattr(context, name, value)
    return context


def test_https_with_security_headers_and_a_clean_stop(server: WebUIProcess) -> None:
    connection = http.client.HTTPSConnection("127.0.0.1", server.port, timeout=10,
                                             context=client_context())
    connection.request("GET", "/")
    response = connection.getresponse()
    assert response.status == 302 and response.getheader("Location") == "/login?next=/"
    response.read()
    connection.request("GET", "/login")
    response = connection.getresponse()
    body = response.read().decode()
    assert response.status == 200 and 'name="csrf_token"' in body
    assert response.getheader("Strict-Transport-Security") == "max-age=31536000"
    assert "Secure" in response.getheader("Set-Cookie")
    connection.close()
    assert server.stop() == 0
    assert "web UI stopped" in server.log_text()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_plain_http_and_old_tls_are_refused(server: WebUIProcess) -> None:
    plain = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    with pytest.raises(ConnectionResetError):
        plain.request("GET", "/login")
        plain.getresponse()
    old = client_context(minimum_version=ssl.TLSVersion.TLSv1,
                         maximum_version=ssl.TLSVersion.TLSv1_1)
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    connection = http.client.HTTPSConnection("127.0.0.1", server.port, timeout=5, context=old)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        connection.request("GET", "/login")
