"""Persistent state: the only package that runs SQL (and writes kept mail files).

`Storage.open(data_dir)` creates the directory and migrates the schema; the stores hang
off it: `storage.lists` (lists with expiry), `storage.messagelog` (wrap it in a
`MessageLogWriter` on the proxy's hot path) and `storage.mail` (kept mail files).
"""

from appliance.storage.engine import Database, create_storage_engine, head_version, upgrade
from appliance.storage.facade import DB_FILENAME, MAIL_DIRNAME, Storage
from appliance.storage.lists import (
    IP_LISTS,
    LIST_NAMES,
    SOURCES,
    ListEntry,
    ListStore,
    normalise_value,
)
from appliance.storage.mailstore import FOLDERS, KeptFile, MailStore
from appliance.storage.messagelog import (
    ACTIONS,
    LISTENERS,
    MessageLog,
    MessageLogEntry,
    MessageLogWriter,
)
from appliance.storage.writer import BackgroundWriter

__all__ = [
    "ACTIONS",
    "DB_FILENAME",
    "FOLDERS",
    "IP_LISTS",
    "LISTENERS",
    "LIST_NAMES",
    "MAIL_DIRNAME",
    "SOURCES",
    "BackgroundWriter",
    "Database",
    "KeptFile",
    "ListEntry",
    "ListStore",
    "MailStore",
    "MessageLog",
    "MessageLogEntry",
    "MessageLogWriter",
    "Storage",
    "create_storage_engine",
    "head_version",
    "normalise_value",
    "upgrade",
]
