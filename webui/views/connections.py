"""The live SMTP sessions of every proxy worker (from the control socket), refreshed."""

from __future__ import annotations

import time

from flask import Blueprint, render_template

from appliance.control import SessionInfo, WorkerStatus
from webui import access
from webui.state import state

bp = Blueprint("connections", __name__)


def _live() -> tuple[list[WorkerStatus], list[SessionInfo]]:
    control = state().control()
    return control.workers(), control.sessions()


@bp.get("/connections")
@access.operator
def index() -> str:
    workers, sessions = _live()
    return render_template("connections.html", workers=workers, sessions=sessions,
                           now=time.time())


@bp.get("/connections/table")
@access.operator
def table() -> str:
    """The table alone, for the page's periodic refresh (static/app.js)."""
    workers, sessions = _live()
    return render_template("connections_table.html", workers=workers, sessions=sessions,
                           now=time.time())
