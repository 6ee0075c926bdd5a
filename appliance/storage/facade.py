"""`Storage`: everything persistent of one appliance, opened and migrated in one call."""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Self

from sqlalchemy import Engine

from appliance.storage.audit import AuditLog
from appliance.storage.corpus import CorpusStore
from appliance.storage.engine import (
    DEFAULT_BUSY_TIMEOUT_MS,
    Database,
    create_storage_engine,
    current_version,
    sqlite_url,
    upgrade,
)
from appliance.storage.greylist import GreylistStore
from appliance.storage.links import UsedLinkStore
from appliance.storage.lists import ListStore
from appliance.storage.mailstore import MailStore
from appliance.storage.messagelog import MessageLog
from appliance.storage.penalty import PenaltyStore
from appliance.storage.personal import PersonalBlacklistStore
from appliance.storage.releases import ReleaseStore
from appliance.storage.training import TrainingStore
from appliance.storage.users import UserStore

DB_FILENAME = "postwall.db"
MAIL_DIRNAME = "mail"
CORPUS_DIRNAME = "corpus"


class Storage:
    """All persistent state of one appliance: lists, message log, kept mail, greylist
    and penalty box.

    One instance per process (each worker process opens its own)."""

    def __init__(self, engine: Engine, data_dir: Path) -> None:
        self.engine = engine
        self.data_dir = data_dir
        self.db = Database(engine)
        self.lists = ListStore(self.db)
        self.messagelog = MessageLog(self.db)
        self.greylist = GreylistStore(self.db)
        self.penalty = PenaltyStore(self.db)
        self.mail = MailStore(data_dir / MAIL_DIRNAME)
        # The web UI's state: accounts, the audit log, quarantine releases.
        self.users = UserStore(self.db)
        self.audit = AuditLog(self.db)
        self.releases = ReleaseStore(self.db)
        # The learning loop: token counts + ledger, the corpus copies, personal
        # blacklists and the block-report links already used.
        self.training = TrainingStore(self.db)
        self.corpus = CorpusStore(data_dir / CORPUS_DIRNAME)
        self.personal = PersonalBlacklistStore(self.db)
        self.links = UsedLinkStore(self.db)

    @classmethod
    def open(
        cls,
        data_dir: Path,
        url: str | None = None,
        *,
        busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
        migrate: bool = True,
    ) -> Storage:
        """Create `data_dir` if needed, connect (default: SQLite ``<data_dir>/postwall.db``)
        and migrate the schema to the newest revision (`migrate=False`: a process started
        after the migration, such as a proxy worker, skips loading the migration tools)."""
        data_dir = Path(data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        engine = create_storage_engine(
            url or sqlite_url(data_dir / DB_FILENAME), busy_timeout_ms=busy_timeout_ms
        )
        try:
            if migrate:
                upgrade(engine)
        except BaseException:
            engine.dispose()
            raise
        return cls(engine, data_dir)

    def schema_version(self) -> str | None:
        """The revision the database is at (equals `head_version()` after `open`)."""
        return current_version(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
