"""Listeners and processes: a supervisor that owns the metrics endpoint and N worker
processes sharing the SMTP ports with SO_REUSEPORT; signals for reload and drain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import ssl
import sys
import time
from pathlib import Path
from typing import Any

from appliance.config import loader
from appliance.config.schema import Config, parse_hostport
from appliance.context import Listener
from appliance.smtp.limits import new_shared_counts, reset_worker

log = logging.getLogger("postwall.server")

DRAIN_SECONDS = 30.0
MAINTENANCE_SECONDS = 2.0
RETENTION_SECONDS = 600.0
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


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


def worker_main(config_path: str | None, index: int, shared_counts: Any = None) -> None:
    """Entry point of a worker process (spawned, so it starts from a clean interpreter)."""
    loaded = loader.load(Path(config_path) if config_path else None)
    setup_logging(loaded.config.log_level)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # uvloop is optional; the stdlib loop is only slower
        pass
    try:
        asyncio.run(serve_worker(loaded, index, shared_counts))
    except OSError as exc:
        log.error("worker %d cannot listen: %s", index, exc)
        sys.exit(3)


async def serve_worker(
    loaded: loader.LoadedConfig, index: int, shared_counts: Any = None
) -> None:
    from appliance.runtime import Runtime
    from appliance.smtp.handler import Handler
    from appliance.smtp.session import PostwallSMTP
    from appliance.storage.facade import Storage

    config = loaded.config
    storage = Storage.open(config.data_dir)
    from appliance.smtp.limits import ConnectionCounts

    counts = ConnectionCounts(shared_counts, index) if shared_counts is not None else None
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

    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, runtime.reload)
    maintenance = asyncio.create_task(_maintenance(runtime, index))
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
    while True:
        await asyncio.sleep(MAINTENANCE_SECONDS)
        try:
            await runtime.refresh_lists()
            runtime.pool.prune()
            if index == 0 and time.monotonic() - last_retention > RETENTION_SECONDS:
                last_retention = time.monotonic()
                await asyncio.to_thread(_retention, runtime)
        except Exception:
            log.exception("maintenance failed")


def _retention(runtime: object) -> None:
    from appliance.runtime import Runtime

    assert isinstance(runtime, Runtime) and runtime.storage is not None
    store = runtime.config.store
    removed = runtime.storage.mail.enforce_retention(
        store.retention_days, store.max_files_per_folder
    )
    expired = runtime.storage.lists.purge_expired()
    rows = runtime.storage.messagelog.purge_older_than(store.log_retention_days)
    if removed or expired or rows:
        log.info("retention: removed %d kept message(s), %d list entries, %d log rows",
                 removed, expired, rows)


# -- supervisor ------------------------------------------------------------------------


class Supervisor:
    def __init__(self, config_path: Path | None, workers: int) -> None:
        self.config_path = config_path
        self.count = workers
        self.ctx = multiprocessing.get_context("spawn")
        self.procs: dict[int, multiprocessing.process.BaseProcess] = {}
        self.stopping = False

        self.shared_counts = new_shared_counts(workers, self.ctx)

    def _start(self, index: int) -> None:
        proc = self.ctx.Process(
            target=worker_main,
            args=(str(self.config_path) if self.config_path else None, index, self.shared_counts),
            name=f"postwall-worker-{index}", daemon=False,
        )
        proc.start()
        self.procs[index] = proc

    def run(self) -> int:
        loaded = loader.load(self.config_path)
        config = loaded.config
        setup_logging(config.log_level)
        from appliance.storage.facade import Storage

        Storage.open(config.data_dir).close()  # migrate once, before workers open it
        metrics_dir = config.data_dir / "run" / "metrics"
        if metrics_dir.exists():
            shutil.rmtree(metrics_dir)
        metrics_dir.mkdir(parents=True, mode=0o700)
        os.environ[MULTIPROC_ENV] = str(metrics_dir)
        for index in range(self.count):
            self._start(index)
        if config.metrics.listen:
            from appliance import metrics

            metrics.serve(config.metrics.listen)

        signal.signal(signal.SIGHUP, self._on_hup)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        log.info("postwall %d worker(s) started", self.count)
        failures: dict[int, list[float]] = {}
        while True:
            time.sleep(0.2)
            for index, proc in list(self.procs.items()):
                if proc.is_alive():
                    continue
                proc.join()
                self._mark_dead(proc.pid)
                if self.stopping:
                    del self.procs[index]
                    continue
                recent = [t for t in failures.get(index, []) if time.monotonic() - t < 60]
                recent.append(time.monotonic())
                failures[index] = recent
                if proc.exitcode == 3 or len(recent) > 5:
                    log.error("worker %d keeps failing (exit %s); stopping", index, proc.exitcode)
                    self._on_term(signal.SIGTERM, None)
                    self._wait_all()
                    return 1
                log.warning("worker %d exited with %s; restarting", index, proc.exitcode)
                reset_worker(self.shared_counts, index)
                self._start(index)
            if self.stopping and not self.procs:
                return 0

    def _mark_dead(self, pid: int | None) -> None:
        if pid is None:
            return
        with contextlib.suppress(Exception):
            from appliance import metrics

            metrics.mark_worker_dead(pid)

    def _on_hup(self, signum: int, frame: object) -> None:
        try:
            loader.load(self.config_path)
        except loader.ConfigError as exc:
            log.error("not reloading, the configuration is invalid:\n%s", exc)
            return
        for proc in self.procs.values():
            if proc.pid:
                os.kill(proc.pid, signal.SIGHUP)

    def _on_term(self, signum: int, frame: object) -> None:
        self.stopping = True
        for proc in self.procs.values():
            if proc.pid and proc.is_alive():
                os.kill(proc.pid, signal.SIGTERM)

    def _wait_all(self) -> None:
        for proc in self.procs.values():
            proc.join(DRAIN_SECONDS + 5)
