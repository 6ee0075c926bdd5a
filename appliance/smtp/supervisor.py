"""`postwall serve`: start N worker processes that share the SMTP ports, restart a worker
that dies, forward SIGHUP (reload) and SIGTERM (drain) to them.

Kept deliberately small in memory: the configuration is validated and the database
migrated by a preflight child process, so this process never loads the schema or the
database layer."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from appliance.smtp.limits import create_counts_file, reset_worker

log = logging.getLogger("postwall.supervisor")

DRAIN_SECONDS = 35.0
RESTARTS_PER_MINUTE = 5
EXIT_CONFIG = 2
EXIT_LISTEN = 3
EXIT_RUNNING = 4
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Large message buffers from mmap, so freed memory goes back to the system at once
# instead of fragmenting the heap; few arenas, since worker threads are few.
WORKER_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_ARENA_MAX": "2"}


class Supervisor:
    def __init__(self, config_path: Path, workers: int) -> None:
        self.config_path = config_path.resolve()
        self.count = workers
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.stopping = False
        self.counts_path = Path()
        self.env: dict[str, str] = {}

    def _worker_argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "appliance.smtp.worker", *args]

    def preflight(self) -> dict[str, str] | None:
        result = subprocess.run(  # noqa: S603 - our own interpreter and module, no shell
            self._worker_argv("preflight", str(self.config_path)),
            stdout=subprocess.PIPE, stderr=None, check=False,
        )
        if result.returncode != 0:
            return None
        return json.loads(result.stdout)

    def _start(self, index: int) -> None:
        self.procs[index] = subprocess.Popen(  # noqa: S603 - as above
            self._worker_argv("serve", str(self.config_path), str(index), str(self.counts_path)),
            env=self.env, stdin=subprocess.DEVNULL,
        )

    def run(self) -> int:
        facts = self.preflight()
        if facts is None:
            return EXIT_CONFIG
        logging.basicConfig(
            level=getattr(logging, facts["log_level"].upper()),
            format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s",
        )
        run_dir = Path(facts["data_dir"]) / "run"
        run_dir.mkdir(parents=True, exist_ok=True)
        if not self._lock(run_dir / "serve.lock"):
            log.error("another postwall serve already runs with %s (its workers would share "
                      "the ports through SO_REUSEPORT); stop it first", facts["data_dir"])
            return EXIT_RUNNING
        metrics_dir = run_dir / "metrics"
        if metrics_dir.exists():
            shutil.rmtree(metrics_dir)
        metrics_dir.mkdir(parents=True, mode=0o700)
        # Control sockets of an earlier run (maybe with more workers) would look alive.
        shutil.rmtree(run_dir / "control", ignore_errors=True)
        self.counts_path = run_dir / "connections"
        create_counts_file(self.counts_path, self.count)
        self.env = {**os.environ, MULTIPROC_ENV: str(metrics_dir), **WORKER_MALLOC_ENV}

        signal.signal(signal.SIGHUP, self._on_hup)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        for index in range(self.count):
            self._start(index)
        log.info("postwall: %d worker(s) started", self.count)
        return self._watch()

    def _lock(self, path: Path) -> bool:
        """Held for the supervisor's lifetime: one `serve` per data directory."""
        self._lock_file = open(path, "a+")  # noqa: SIM115 - kept open on purpose
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        self._lock_file.seek(0)
        self._lock_file.truncate()
        self._lock_file.write(f"{os.getpid()}\n")
        self._lock_file.flush()
        return True

    def _watch(self) -> int:
        failures: dict[int, list[float]] = {}
        status = 0
        while True:
            time.sleep(0.2)
            for index, proc in list(self.procs.items()):
                code = proc.poll()
                if code is None:
                    continue
                if self.stopping:
                    del self.procs[index]
                    continue
                recent = [t for t in failures.get(index, []) if time.monotonic() - t < 60]
                recent.append(time.monotonic())
                failures[index] = recent
                if code == EXIT_LISTEN or len(recent) > RESTARTS_PER_MINUTE:
                    log.error("worker %d keeps failing (exit %s); stopping", index, code)
                    status = EXIT_LISTEN if code == EXIT_LISTEN else 1
                    self._on_term(signal.SIGTERM, None)
                    del self.procs[index]
                    continue
                log.warning("worker %d exited with %s; restarting it", index, code)
                reset_worker(self.counts_path, index)
                self._forget_live_gauges(proc.pid)
                self._start(index)
            if self.stopping and not self.procs:
                return status

    def _forget_live_gauges(self, pid: int) -> None:
        """What prometheus_client's mark_process_dead does, without importing it here:
        a dead worker's open sessions must not stay in the live gauges."""
        for path in (Path(self.env[MULTIPROC_ENV])).glob(f"gauge_live*_{pid}.db"):
            path.unlink(missing_ok=True)

    def _on_hup(self, signum: int, frame: object) -> None:
        if self.preflight() is None:
            log.error("not reloading: the configuration is invalid (see above)")
            return
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGHUP)

    def _on_term(self, signum: int, frame: object) -> None:
        self.stopping = True
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
