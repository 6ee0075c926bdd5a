"""The one error type of backup and restore: its message is what the operator reads."""


class BackupError(Exception):
    """A backup or restore step failed; the message says what, where and what to do."""
