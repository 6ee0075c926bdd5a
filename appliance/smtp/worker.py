"""Entry points of the processes `postwall serve` starts:

    python -m appliance.smtp.worker preflight CONFIG   validate, migrate, print the facts
                                                        the supervisor needs (JSON)
    python -m appliance.smtp.worker serve CONFIG INDEX COUNTS_FILE

Plain subprocesses rather than multiprocessing: the supervisor stays small (it never
imports the configuration schema or the database layer) and there is no helper process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path

EXIT_CONFIG = 2
EXIT_LISTEN = 3

log = logging.getLogger("postwall.worker")


def preflight(config_path: str) -> int:
    from appliance.config import loader
    from appliance.storage.facade import Storage

    try:
        loaded = loader.load(Path(config_path))
    except loader.ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    config = loaded.config
    try:
        from appliance.runtime import Runtime

        Runtime(loaded, None, record=False)  # builds every filter: catches bad rules now
        Storage.open(config.data_dir).close()  # migrate once, before any worker opens it
        from appliance.ops.probe import ensure_token

        ensure_token(config.data_dir)  # lets the upgrade's health gate be recognised
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    facts = {"data_dir": str(config.data_dir), "log_level": config.log_level}
    print(json.dumps(facts))
    return 0


def serve(config_path: str, index: int, counts_path: str) -> int:
    from appliance.config import loader
    from appliance.smtp.server import serve_worker, setup_logging

    loaded = loader.load(Path(config_path))
    setup_logging(loaded.config.log_level)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # uvloop is optional; the stdlib loop is only slower
        pass
    try:
        asyncio.run(serve_worker(loaded, index, Path(counts_path)))
    except OSError as exc:
        log.error("worker %d cannot listen: %s", index, exc)
        return EXIT_LISTEN
    return 0


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "preflight":
        return preflight(argv[1])
    if len(argv) == 4 and argv[0] == "serve" and argv[2].isdigit():
        return serve(argv[1], int(argv[2]), argv[3])
    print(__doc__, file=sys.stderr)
    return 64


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
