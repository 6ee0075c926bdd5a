"""The message log: search, colour by action, and the detail of one transaction
("why was this blocked?": every symbol with its reason, our reply and Postfix's)."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, abort, render_template, request

from appliance.storage.messagelog import ACTIONS
from webui import access
from webui.state import state

bp = Blueprint("messages", __name__)

PAGE_SIZE = 50
TIME_FORMATS = ("%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d")


def parse_time(text: str) -> datetime:
    for fmt in TIME_FORMATS:
        try:
            return datetime.strptime(text.strip(), fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
    raise ValueError("use YYYY-MM-DD HH:MM (UTC)")


def search_filters(args: Any) -> tuple[dict[str, Any], dict[str, str], dict[str, str]]:
    """(filters for MessageLog.search, an error per field, the fields as typed)."""
    typed = {k: (args.get(k) or "").strip()[:320]
             for k in ("sender", "recipient", "subject", "ip", "action", "since", "until")}
    errors: dict[str, str] = {}
    filters: dict[str, Any] = {}
    for key in ("sender", "recipient", "subject"):
        if typed[key]:
            filters[key] = typed[key]
    if typed["ip"]:
        try:
            filters["client_ip"] = str(ipaddress.ip_address(typed["ip"]))
        except ValueError:
            errors["ip"] = "not an IP address"
    if typed["action"]:
        if typed["action"] in ACTIONS:
            filters["action"] = typed["action"]
        else:
            errors["action"] = "unknown action"
    for key in ("since", "until"):
        if typed[key]:
            try:
                filters[key] = parse_time(typed[key])
            except ValueError as exc:
                errors[key] = str(exc)
    return filters, errors, typed


@bp.get("/log")
@access.operator
def index() -> tuple[str, int]:
    filters, errors, typed = search_filters(request.args)
    page = max(1, request.args.get("page", 1, type=int) or 1)
    log = state().storage.messagelog
    entries, total = [], 0
    if not errors:
        total = log.count(**filters)
        entries = log.search(**filters, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE)
    return render_template(
        "messages.html",
        entries=entries,
        total=total,
        page=page,
        pages=max(1, -(-total // PAGE_SIZE)),
        typed=typed,
        errors=errors,
        actions=ACTIONS,
        query={k: v for k, v in typed.items() if v},
    ), 400 if errors else 200


@bp.get("/log/<txid>")
@access.operator
def detail(txid: str) -> str:
    if len(txid) > 64:
        abort(404)
    ui = state()
    entry = ui.storage.messagelog.get(txid)
    if entry is None:
        abort(404)
    kept = [folder for folder in ("spam", "discarded", "notspam", "okmail", "archive")
            if ui.storage.mail.exists(folder, entry.id)] if _valid_txid(entry.id) else []
    release = ui.storage.releases.get(entry.id)
    return render_template("message.html", entry=entry, kept=kept, release=release)


def _valid_txid(txid: str) -> bool:
    from appliance.storage.mailstore import validate_txid

    try:
        validate_txid(txid)
    except ValueError:
        return False
    return True
