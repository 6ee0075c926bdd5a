"""Backups: the last run and recent history from the state file `postwall backup` writes,
and "Back up now" as a request file that a systemd path unit turns into a run.

The web UI runs as the unprivileged service user: it cannot read the SMB credentials or
the encryption key (root only), so it never runs a backup or lists a target itself; what
it shows is what the last runs recorded. Restores stay on the command line (they stop
the services this page runs under).
"""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint, flash, redirect, render_template, url_for
from werkzeug.wrappers import Response

from appliance.backup.errors import BackupError
from appliance.backup.request import read_request, write_request
from appliance.backup.state import read_state
from appliance.status import check_backup
from webui import access
from webui.state import state

bp = Blueprint("backups", __name__)

HISTORY_SHOWN = 10


@bp.get("/backups")
@access.operator
def index() -> str:
    config = state().loaded.config
    data_dir = config.data_dir
    backup_state = read_state(data_dir)
    verified = backup_state.verified_at()
    return render_template(
        "backups.html",
        check=check_backup(config),
        configured=config.backup.configured,
        verified_age=(datetime.now(UTC) - verified).total_seconds() if verified else None,
        backup_state=backup_state,
        history=backup_state.history[:HISTORY_SHOWN],
        running=backup_state.running_now(),
        pending=read_request(data_dir),
    )


@bp.post("/backups/run")
@access.admin
def run_now() -> Response:
    user = access.current_user()
    assert user is not None  # the admin rule let the request through
    now = datetime.now(UTC)
    try:
        pending = write_request(state().data_dir, user.username, now)
    except BackupError as exc:
        flash(f"The backup could not be requested: {exc}.", "error")
        return redirect(url_for("backups.index"))
    if pending is not None:
        flash(f"A backup was already requested by {pending.by} at "
              f"{pending.at:%Y-%m-%d %H:%M:%S} UTC; it starts when the backup service "
              "picks it up.", "warning")
        return redirect(url_for("backups.index"))
    access.audit("backup.requested", "backup", None,
                 f"requested at {now:%Y-%m-%d %H:%M:%S} UTC")
    flash("Backup requested: the backup service starts it within seconds; this page shows "
          "its result when it has finished.", "success")
    return redirect(url_for("backups.index"))
