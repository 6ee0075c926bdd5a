"""`postwall backup` and `postwall restore`: consistent snapshots of the appliance's
configuration and state, packed into one (optionally encrypted) tarball, sent to a local
directory and/or an SMB share, verified by restoring them, and restored mail-safely.

Modules, each with one job: snapshot (SQLite online backups), contents (what goes in),
manifest, archive (tar + names), crypto (authenticated encryption), targets (local, SMB),
verify (a trial restore), retention (which backups to keep), lock, state (the last
verified backup, its metric), run (one backup, start to end), restore.
"""

from appliance.backup.errors import BackupError

__all__ = ["BackupError"]
