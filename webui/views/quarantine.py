"""Kept mail: the quarantine (spam/) and the other folders; a safe view of one message;
release (delivered once, without filtering), delete, report as spam / not spam, and
putting the sender or its domain on a list."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from appliance import quarantine as actions
from appliance.storage.mailstore import FOLDERS, validate_folder, validate_txid
from webui import access, mailview
from webui.forms import QuarantineActionForm, QuarantineListForm
from webui.state import state

bp = Blueprint("quarantine", __name__)

PAGE_SIZE = 50
BROWSABLE = FOLDERS  # the reports (errors/*) too: what the classifier will learn from
FOLDER_TITLES = {
    "spam": "Quarantine (spam)",
    "discarded": "Discarded",
    "notspam": "Delivered ham",
    "okmail": "Whitelisted / unprocessed",
    "archive": "Archive",
    "errors/spam": "Reported as spam",
    "errors/notspam": "Reported as not spam",
}


def _folder(value: str | None) -> str:
    try:
        return validate_folder(value or "spam")
    except ValueError:
        abort(404)


def _txid(value: str | None) -> str:
    try:
        return validate_txid(value or "")
    except ValueError:
        abort(404)


@bp.get("/quarantine")
@access.operator
def index() -> str:
    ui = state()
    folder = _folder(request.args.get("folder"))
    page = max(1, request.args.get("page", 1, type=int) or 1)
    files = ui.storage.mail.list(folder)
    total = len(files)
    shown = files[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
    log = {f.txid: ui.storage.messagelog.get(f.txid) for f in shown}
    releases = ui.storage.releases.for_ids(f.txid for f in shown)
    return render_template(
        "quarantine.html",
        folder=folder,
        folders=BROWSABLE,
        titles=FOLDER_TITLES,
        files=shown,
        log=log,
        releases=releases,
        total=total,
        page=page,
        pages=max(1, -(-total // PAGE_SIZE)),
    )


@bp.get("/quarantine/view")
@access.operator
def view() -> str:
    ui = state()
    folder = _folder(request.args.get("folder"))
    txid = _txid(request.args.get("id"))
    try:
        content = ui.storage.mail.read(folder, txid)
    except FileNotFoundError:
        abort(404)
    entry = ui.storage.messagelog.get(txid)
    sender = entry.sender if entry else ""
    list_form = QuarantineListForm(formdata=None, folder=folder, txid=txid)
    return render_template(
        "quarantine_view.html",
        folder=folder,
        txid=txid,
        message=mailview.parse(content),
        size=len(content),
        entry=entry,
        release=ui.storage.releases.get(txid),
        action_form=QuarantineActionForm(formdata=None, folder=folder, txid=txid),
        list_form=list_form,
        sender=sender,
        sender_domain=sender.rpartition("@")[2] if "@" in sender else "",
        titles=FOLDER_TITLES,
    )


@bp.get("/quarantine/download")
@access.operator
def download() -> Response:
    folder = _folder(request.args.get("folder"))
    txid = _txid(request.args.get("id"))
    try:
        content = state().storage.mail.read(folder, txid)
    except FileNotFoundError:
        abort(404)
    response = Response(content, mimetype="application/octet-stream")
    response.headers["Content-Disposition"] = f'attachment; filename="{txid}.eml"'
    return response


def _action_form(form_class: type[QuarantineActionForm] = QuarantineActionForm
                 ) -> tuple[QuarantineActionForm, str, str]:
    form = form_class()
    if not form.validate_on_submit():
        abort(400)
    return form, _folder(form.folder.data), _txid(form.txid.data)


def _back(folder: str, txid: str | None = None) -> Response:
    if txid and state().storage.mail.exists(folder, txid):
        return redirect(url_for("quarantine.view", folder=folder, id=txid))
    return redirect(url_for("quarantine.index", folder=folder))


@bp.post("/quarantine/release")
@access.operator
def release() -> Response:
    _, folder, txid = _action_form()
    user = access.current_user()
    assert user is not None
    ui = state()
    try:
        result = actions.release(ui.storage, ui.loaded.config, folder, txid, user.username)
    except actions.QuarantineError as exc:
        flash(f"Not released: {exc}", "error")
        return _back(folder, txid)
    refused = "; ".join(f"{r}: {t}" for r, t in result.refused.items())
    skipped = (f"; not again to {', '.join(result.skipped)} (released through their block "
               "report)" if result.skipped else "")
    learned = f"; {result.learned.describe()}" if result.learned else ""
    access.audit("quarantine.release", f"{folder}/{txid}", None,
                 f"to {', '.join(result.delivered_to)}: {result.reply}"
                 + (f"; refused {refused}" if refused else "") + skipped + learned)
    flash(f"Released to {', '.join(result.delivered_to)} ({result.reply})."
          + (f" Refused: {refused}." if refused else "")
          + (f" Not again to {', '.join(result.skipped)}: they released it from their "
             "block report." if result.skipped else "")
          + (f" Classifier: {result.learned.describe()}" if result.learned else ""),
          "success")
    return _back(folder, txid)


@bp.post("/quarantine/delete")
@access.operator
def delete() -> Response:
    _, folder, txid = _action_form()
    try:
        actions.delete(state().storage, folder, txid)
    except actions.QuarantineError as exc:
        flash(f"Not deleted: {exc}", "error")
        return _back(folder)
    access.audit("quarantine.delete", f"{folder}/{txid}", "kept", None)
    flash(f"{txid} deleted.", "success")
    return _back(folder)


@bp.post("/quarantine/report")
@access.operator
def report() -> Response:
    _, folder, txid = _action_form()
    kind = request.form.get("kind", "")
    try:
        target = actions.report(state().storage, folder, txid, kind)
    except actions.QuarantineError as exc:
        flash(f"Not reported: {exc}", "error")
        return _back(folder, txid)
    access.audit(f"quarantine.report_{kind}", f"{folder}/{txid}", None, target)
    flash(f"Reported as {'spam' if kind == 'spam' else 'not spam'}: the classifier learns "
          f"from {target}/.", "success")
    return _back(folder, txid)


@bp.post("/quarantine/list")
@access.operator
def add_to_list() -> Any:
    form, folder, txid = _action_form(QuarantineListForm)
    assert isinstance(form, QuarantineListForm)
    ui = state()
    entry = ui.storage.messagelog.get(txid)
    sender = entry.sender if entry else ""
    if "@" not in sender:
        flash("Not added: the message has no sender address (null sender).", "error")
        return _back(folder, txid)
    value = sender if form.what.data == "sender" else "@" + sender.rpartition("@")[2]
    user = access.current_user()
    assert user is not None
    try:
        added = ui.storage.lists.add(form.list_name.data, value, added_by=user.username,
                                     comment=f"from message {txid}", source="ui")
    except ValueError as exc:
        flash(f"Not added: {exc}", "error")
        return _back(folder, txid)
    access.audit("lists.add", f"{form.list_name.data}: {added.value}", None,
                 f"no expiry; from message {txid}")
    flash(f"{added.value} is on the {form.list_name.data}.", "success")
    return _back(folder, txid)
