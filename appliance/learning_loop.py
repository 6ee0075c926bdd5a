"""The learning loop as one worker runs it: the classifier's token table and the personal
blacklists kept current, outgoing mail learned in the background, and (worker 0 only)
the periodic jobs: scanning the error folders, rebuilding the token counts from the
corpus, sending block-report digests, forgetting expired digest links.

Nothing here blocks the event loop: database reads and learning run in threads, the
rebuild in a separate process (`postwall learn rebuild`), so tokenizing thousands of
messages never competes with the sessions of this worker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.classifier.learner import BackgroundLearner, Learner, LearnJob
from appliance.classifier.table import TokenTable
from appliance.filters.bayes import model_settings, tokenizer_settings
from appliance.personal import PersonalBlacklists

if TYPE_CHECKING:
    from appliance.config.schema import Config
    from appliance.context import TransactionContext
    from appliance.services import Services
    from appliance.storage.facade import Storage

log = logging.getLogger("postwall.learning")

REBUILD_STAMP = "bayes-rebuild.stamp"
DIGEST_STAMP = "blockreport.stamp"


def learner_for(storage: Storage, config: Config) -> Learner:
    settings = tokenizer_settings(config.filters.bayes, config.scoring.subject_prefix)
    return Learner(storage, settings, max_bytes=config.learning.max_message_bytes)


def learn_weights(config: Config) -> dict[str, int]:
    """Weight of the error folders and reports per label (false negatives, positives)."""
    return {"spam": config.learning.false_negative_weight,
            "ham": config.learning.false_positive_weight}


class LearningLoop:
    def __init__(self, storage: Storage | None) -> None:
        self.storage = storage
        self.table: TokenTable | None = None
        self.personal: PersonalBlacklists | None = None
        self._personal_counter: int | None = None
        self._background: BackgroundLearner | None = None
        self._last_scan = 0.0
        self._rebuild: asyncio.subprocess.Process | None = None
        self.config: Config | None = None
        self.services: Services | None = None

    def configure(self, config: Config, services: Services) -> None:
        """Take a (re)loaded configuration and hand the table and the personal lists to
        the filters' services; a changed model needs a fresh table."""
        self.config = config
        self.services = services
        if self.storage is None:
            return
        model = model_settings(config.filters.bayes)
        if self.table is None or self.table.settings != model:
            table = TokenTable(model)
            table.refresh(self.storage.training)
            self.table = table
        if self.personal is None:
            self._refresh_personal()
        services.bayes = self.table
        services.personal = self.personal
        if self._background is not None:
            self._background.learner = learner_for(self.storage, config)

    # -- every maintenance tick ------------------------------------------------------

    async def refresh(self) -> None:
        if self.storage is None or self.table is None:
            return
        await asyncio.to_thread(self.table.refresh, self.storage.training)
        counter = await asyncio.to_thread(self.storage.personal.change_counter)
        if counter != self._personal_counter:
            await asyncio.to_thread(self._refresh_personal)

    def _refresh_personal(self) -> None:
        assert self.storage is not None
        counter = self.storage.personal.change_counter()
        self.personal = PersonalBlacklists(self.storage.personal.all_entries())
        self._personal_counter = counter
        if self.services is not None:
            self.services.personal = self.personal

    # -- outgoing mail -------------------------------------------------------------------

    def learn_outgoing(self, tx: TransactionContext) -> bool:
        """Queue an outgoing message to be learned as ham; never waits."""
        config = self.config
        if self.storage is None or config is None or tx.content is None:
            return False
        settings = config.learning
        if not settings.learn_outgoing or len(tx.content) > settings.outgoing_max_bytes:
            return False
        if self._background is None:
            self._background = BackgroundLearner(learner_for(self.storage, config),
                                                 max_queue=settings.queue_size)
        return self._background.submit(
            LearnJob(tx.content, "ham", "outgoing", tx.mail_from.lower(), 1))

    def flush(self, timeout: float | None = None) -> bool:
        return self._background.flush(timeout) if self._background is not None else True

    # -- worker 0: periodic jobs -----------------------------------------------------------

    async def periodic(self, config_path: Path | None) -> None:
        """Worker 0's jobs; each one failing (database busy, Postfix down) is logged and
        retried later without keeping the others from running."""
        storage, config = self.storage, self.config
        if storage is None or config is None:
            return
        now = time.monotonic()
        run_dir = storage.data_dir / "run"
        if now - self._last_scan >= config.learning.folder_scan_seconds:
            self._last_scan = now
            await self._job("error folder scan", self._scan_folders(storage, config))
        if config_path is not None and self._rebuild_due(run_dir, config.learning.rebuild_hours):
            await self._job("classifier rebuild", self._start_rebuild(config_path, run_dir))
        if config.block_reports.enabled and _digest_due(run_dir, config.block_reports.hour):
            _touch(run_dir / DIGEST_STAMP)  # once a day, even if some digests failed
            await self._job("block reports", self._send_digests(storage, config))

    @staticmethod
    async def _job(name: str, job: Coroutine[Any, Any, None]) -> None:
        try:
            await job
        except Exception:
            log.exception("%s failed; it will be tried again", name)

    @staticmethod
    async def _scan_folders(storage: Storage, config: Config) -> None:
        learner = learner_for(storage, config)
        results = await asyncio.to_thread(learner.scan_error_folders, learn_weights(config))
        if results:
            log.info("learned %d message(s) from the error folders", len(results))
        await asyncio.to_thread(storage.links.purge_expired)

    @staticmethod
    async def _send_digests(storage: Storage, config: Config) -> None:
        from appliance import blockreports

        sent = await asyncio.to_thread(blockreports.send_digests, storage, config)
        log.info("block reports: %d digest(s) sent", sent)

    def _rebuild_due(self, run_dir: Path, hours: float) -> bool:
        if self._rebuild is not None and self._rebuild.returncode is None:
            return False  # still running
        stamp = run_dir / REBUILD_STAMP
        if not stamp.exists():
            _touch(stamp)  # the first rebuild is one interval after the first start
            return False
        return time.time() - stamp.stat().st_mtime >= hours * 3600

    async def _start_rebuild(self, config_path: Path, run_dir: Path) -> None:
        _touch(run_dir / REBUILD_STAMP)
        log.info("starting the periodic classifier rebuild")
        self._rebuild = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "appliance", "learn", "rebuild", "--config", str(config_path),
            stdin=asyncio.subprocess.DEVNULL,
        )

    async def close(self) -> None:
        # A running rebuild is left to finish on its own: it is a process of its own.
        if self._background is not None:
            await asyncio.to_thread(self._background.close)


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    os.utime(path)


def _digest_due(run_dir: Path, hour: int) -> bool:
    """True once a day, at or after `hour` (UTC), if no digest went out today."""
    now = datetime.now(UTC)
    if now.hour < hour:
        return False
    stamp = run_dir / DIGEST_STAMP
    if not stamp.exists():
        return True
    sent = datetime.fromtimestamp(stamp.stat().st_mtime, UTC)
    return sent.date() < now.date()
