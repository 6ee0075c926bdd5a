"""`postwall webui serve`: the application behind cheroot's HTTPS server.

cheroot is a production WSGI server (thread pool, keep-alive, timeouts) that speaks TLS
itself through the standard ssl module, so no reverse proxy is needed in front of it.
Only TLS 1.2 and newer are offered.
"""

from __future__ import annotations

import logging
import signal
import ssl
import sys
from pathlib import Path
from types import FrameType

from cheroot import wsgi
from cheroot.ssl.builtin import BuiltinSSLAdapter

from appliance.config import loader
from appliance.config.schema import parse_hostport

log = logging.getLogger("postwall.webui")


class ServeError(Exception):
    """The UI cannot start; the message says why."""


def build_server(config_path: Path | None) -> wsgi.Server:
    from webui import create_app

    loaded = loader.load(config_path)
    settings = loaded.config.webui
    if settings.cert_file is None or settings.key_file is None:
        raise ServeError(
            "webui.cert_file and webui.key_file must be set: the web UI serves HTTPS only"
        )
    for path in (settings.cert_file, settings.key_file):
        if not path.is_file():
            raise ServeError(f"{path}: no such file")
    try:
        adapter = BuiltinSSLAdapter(str(settings.cert_file), str(settings.key_file))
    except (OSError, ssl.SSLError) as exc:
        raise ServeError(f"cannot use {settings.cert_file} / {settings.key_file}: {exc}") from exc
    adapter.context.minimum_version = ssl.TLSVersion.TLSv1_2
    app = create_app(config_path)
    host, port = parse_hostport(settings.listen)
    server = wsgi.Server(
        (host, port), app, numthreads=settings.threads, server_name="postwall",
        timeout=30, shutdown_timeout=5,
    )
    server.ssl_adapter = adapter
    return server


def serve(config_path: Path | None) -> int:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    server = build_server(config_path)

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt  # ends serve() in the main thread; stop() follows

    signal.signal(signal.SIGTERM, stop)
    try:
        server.prepare()
    except OSError as exc:
        raise ServeError(f"cannot listen on {server.bind_addr}: {exc}") from exc
    host, port = server.bind_addr[:2]
    log.info("web UI serving https://%s:%s/", host, port)
    try:
        server.serve()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        log.info("web UI stopped")
    return 0
