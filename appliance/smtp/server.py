"""One worker process serving the SMTP listeners (shared with the other workers through
SO_REUSEPORT): reload on SIGHUP, drain on SIGTERM, periodic maintenance."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import ssl
import sys
import time
from pathlib import Path

from appliance.config import loader
from appliance.config.schema import Config, parse_hostport
from appliance.context import Listener

log = logging.getLogger("postwall.server")

DRAIN_SECONDS = 30.0
MAINTENANCE_SECONDS = 2.0
RETENTION_SECONDS = 600.0


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # aiosmtpd logs every command at INFO: far too chatty and slow for a gateway.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)


def tls_context(config: Config) -> ssl.SSLContext | None:
    if config.tls.cert_file is None or config.tls.key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.tls.cert_file, config.tls.key_file)
    return context


def listeners(config: Config) -> list[tuple[Listener, str, int]]:
    out = [(Listener.INBOUND, *parse_hostport(config.listen.inbound))]
    if config.listen.relay:
        out.append((Listener.RELAY, *parse_hostport(config.listen.relay)))
    return out


# -- worker -------------------------------------------------------------------------


async def serve_worker(
    loaded: loader.LoadedConfig, index: int, counts_path: Path | None = None
) -> None:
    from appliance.runtime import Runtime
    from appliance.smtp.handler import Handler
    from appliance.smtp.session import PostwallSMTP
    from appliance.storage.facade import Storage

    config = loaded.config
    storage = Storage.open(config.data_dir)
    from appliance.smtp.limits import ConnectionCounts

    counts = ConnectionCounts(counts_path, index) if counts_path is not None else None
    runtime = Runtime(loaded, storage, worker=index, counts=counts)
    handler = Handler(runtime)
    context = tls_context(config)
    loop = asyncio.get_running_loop()
    servers = []
    for listener, host, port in listeners(config):
        def factory(listener: Listener = listener) -> PostwallSMTP:
            return PostwallSMTP(runtime, listener, handler, tls_context=context)

        server = await loop.create_server(
            factory, host, port, reuse_port=True, backlog=1024, reuse_address=True
        )
        servers.append(server)
    bound = ", ".join(f"{kind.value}={host}:{port}" for kind, host, port in listeners(config))
    log.info("worker %d serving %s", index, bound)

    # Latency: the message-log and list threads must not hold the GIL for the default
    # 5 ms while sessions wait, and start-up objects need not be scanned by every GC run.
    sys.setswitchinterval(0.0005)
    gc.freeze()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, runtime.reload)
    maintenance = asyncio.create_task(_maintenance(runtime, index))
    from appliance.control import ControlServer

    control = ControlServer(runtime, index)  # live sessions and reloads for the web UI
    control.listening_sockets = lambda: [sock for srv in servers for sock in srv.sockets]
    try:
        await control.start()
    except OSError as exc:
        log.error("control socket %s unavailable: %s", control.path, exc)
    if index == 0 and config.metrics.listen:
        from appliance import metrics

        try:
            metrics.serve(config.metrics.listen, config.data_dir)
        except OSError as exc:
            log.error("metrics endpoint %s unavailable: %s", config.metrics.listen, exc)
    await stop.wait()

    log.info("worker %d draining %d session(s)", index, len(runtime.sessions))
    runtime.draining = True
    for server in servers:
        server.close()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(runtime.all_sessions_closed(), DRAIN_SECONDS)
    from appliance.smtp import replies

    for session in list(runtime.sessions):
        session.close_with(replies.SHUTTING_DOWN)
    await control.close()
    maintenance.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await maintenance
    await runtime.close()
    storage.close()
    log.info("worker %d stopped", index)


async def _maintenance(runtime: object, index: int) -> None:
    from appliance.runtime import Runtime

    assert isinstance(runtime, Runtime)
    last_retention = 0.0
    from appliance.notify.monitor import Monitor

    monitor = Monitor()  # clamd, Postfix and disk incidents; the daily summary
    while True:
        await asyncio.sleep(MAINTENANCE_SECONDS)
        try:
            _forget_stale_maintenance(runtime)
            await runtime.refresh_lists()
            await runtime.client_state.refresh()
            await runtime.learning.refresh()
            if index == 0:
                await runtime.learning.periodic(runtime.loaded.base_path)
            runtime.pool.prune()
            if index == 0:
                await monitor.tick(runtime.config, runtime.storage)
            if index == 0 and time.monotonic() - last_retention > RETENTION_SECONDS:
                last_retention = time.monotonic()
                await asyncio.to_thread(_retention, runtime)
        except Exception:
            log.exception("maintenance failed")


def _forget_stale_maintenance(runtime: object) -> None:
    """A worker that started in maintenance because of the flag (appliance/ops/flag.py)
    serves again once the window that raised it is gone without saying so (killed):
    a forgotten flag must not keep refusing mail."""
    from appliance.ops.flag import active_flag
    from appliance.runtime import Runtime

    assert isinstance(runtime, Runtime)
    if runtime.maintenance_flag is not None and active_flag(runtime.config.data_dir) is None:
        log.warning("worker %d: the maintenance window is gone; serving again", runtime.worker)
        runtime.set_maintenance(False)


def _retention(runtime: object) -> None:
    from appliance.runtime import Runtime

    assert isinstance(runtime, Runtime) and runtime.storage is not None
    store = runtime.config.store
    removed = runtime.storage.mail.enforce_retention(
        store.retention_days, store.max_files_per_folder
    )
    expired = runtime.storage.lists.purge_expired()
    rows = runtime.storage.messagelog.purge_older_than(store.log_retention_days)
    triplets, penalised = runtime.client_state.retention()
    if triplets or penalised:
        log.info("retention: removed %d greylist triplet(s), %d penalty box client(s)",
                 triplets, penalised)
    if removed or expired or rows:
        log.info("retention: removed %d kept message(s), %d list entries, %d log rows",
                 removed, expired, rows)
