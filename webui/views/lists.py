"""White/black/red/noprocessing/spamlover, IP and autowhitelist lists: search, add,
remove, expiry, import and export. Entries live in the database; the base file's
entries are shown beside them, read-only."""

from __future__ import annotations

from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from appliance.listfiles import ListFiles
from appliance.services import config_entries, config_files, file_kind, list_file_refs
from appliance.storage.lists import LIST_NAMES, normalise_value
from webui import access, concurrency
from webui.forms import ListAddForm, ListImportForm, ListRemoveForm
from webui.state import WEBUI_DIRNAME, state

bp = Blueprint("lists", __name__)

PAGE_SIZE = 50
IMPORT_PREFIX = "import"  # its fields must not share ids with the add form
MAX_IMPORT_LINES = 100_000
DESCRIPTIONS = {
    "whitelist": "Senders never scored (a virus is still refused).",
    "blacklist": "Senders refused with 550.",
    "redlist": "Senders whose mail never feeds the autowhitelist or the corpora.",
    "noprocessing": "Senders or recipients whose mail is not checked, except for viruses.",
    "spamlovers": "Recipients who want all their mail: blocks become tags.",
    "ip_allow": "Client networks accepted without scoring.",
    "ip_deny": "Client networks refused at connect with 554.",
    "autowhitelist": "Addresses your users wrote to (added automatically, with expiry).",
}


def _list_or_404(name: str) -> str:
    if name not in LIST_NAMES:
        abort(404)
    return name


def _expiry(days: int | None) -> datetime | None:
    return datetime.now(UTC) + timedelta(days=days) if days else None


# The list files the configuration names, read by this process for display (the proxy
# reads its own copy); a stat per file per page view, a read only when one changed.
_files = ListFiles()


def lists_lock() -> AbstractContextManager[None]:
    """One UI list change at a time, across threads and processes: check, then write."""
    return concurrency.edit_lock(state().data_dir / WEBUI_DIRNAME, "lists")


def file_entries(name: str) -> list[tuple[str, list[tuple[str, int]], str | None]]:
    """(path, [(entry, line)], problem) for each file the list `name` names."""
    config = state().loaded.config
    paths = config_files(config).get(name, [])
    if not paths:
        return []
    _files.watch(list_file_refs(config))
    _files.refresh()
    problems = {(f.path, f.kind): f.problem for f in _files.states()}
    result = []
    for path in paths:
        loaded = _files.get(path, file_kind(name))
        rows = list(zip(loaded.entries, loaded.lines, strict=True)) if loaded else []
        result.append((path, rows, problems.get((path, file_kind(name)))))
    return result


def list_conflict(name: str, values: list[str], *, removing: bool = False
                  ) -> concurrency.Conflict | None:
    """The `values` someone else added, changed or removed since the page was loaded
    (the form's `loaded_at`); None if there are none, or if the form has no time (a
    script naming its values: it changes exactly those)."""
    since = concurrency.parse_time(request.form.get("loaded_at"))
    if since is None:
        return None
    lists = state().storage.lists
    audit = state().storage.audit.search(action="lists.", limit=concurrency.AUDIT_LOOKBACK)
    changes = []
    for value in values:
        entry = lists.get(name, value)
        target = f"{name}: {value}"
        if entry is not None and entry.updated_at > since:
            fallback = (f"{entry.added_by or entry.source} at "
                        f"{entry.updated_at:%Y-%m-%d %H:%M:%S} UTC")
            changes.append(concurrency.Change(
                value, "(not on the list)" if entry.created_at > since else "on the list",
                _describe(entry), concurrency.who(
                    audit, lambda e, t=target: e.target == t, since, fallback)))
        elif entry is None:
            by = concurrency.who(audit, lambda e, t=target: e.target == t
                                 and e.action == "lists.remove", since, "")
            if by:
                changes.append(concurrency.Change(value, "on the list", "removed", by))
    if not changes:
        return None
    verb = "remove" if removing else "add"
    return concurrency.Conflict(changes, message=(
        f"Someone else changed {'this entry' if len(changes) == 1 else 'these entries'} "
        f"after you loaded this page; nothing was saved. The list below is current: "
        f"{verb} again if you still want to."))


def render_list(name: str, *, add_form: ListAddForm | None = None,
                import_form: ListImportForm | None = None,
                import_errors: list[str] | None = None, code: int = 200,
                conflict: concurrency.Conflict | None = None) -> tuple[str, int]:
    ui = state()
    search = request.args.get("q", "").strip()[:200] or None
    page = max(1, request.args.get("page", 1, type=int) or 1)
    total = ui.storage.lists.count(name, search=search)
    entries = ui.storage.lists.entries(
        name, search=search, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE
    )
    counts = {n: ui.storage.lists.count(n) for n in LIST_NAMES}
    return render_template(
        "lists.html",
        names=LIST_NAMES,
        name=name,
        description=DESCRIPTIONS.get(name, ""),
        counts=counts,
        entries=entries,
        total=total,
        page=page,
        pages=max(1, -(-total // PAGE_SIZE)),
        search=search or "",
        from_config=config_entries(ui.loaded.config).get(name, []),
        add_form=add_form or ListAddForm(formdata=None),
        import_form=import_form or ListImportForm(formdata=None, prefix=IMPORT_PREFIX),
        import_errors=import_errors or [],
        remove_form=ListRemoveForm(formdata=None),
        now=datetime.now(UTC),
        from_files=file_entries(name),
        loaded_at=concurrency.now_text(),
        conflict=conflict,
    ), code


@bp.get("/lists")
@access.operator
def index() -> Response:
    return redirect(url_for("lists.show", name="whitelist"))


@bp.get("/lists/<name>")
@access.operator
def show(name: str) -> tuple[str, int]:
    return render_list(_list_or_404(name))


@bp.post("/lists/<name>/add")
@access.operator
def add(name: str) -> Response | tuple[str, int]:
    _list_or_404(name)
    form = ListAddForm()
    if form.validate_on_submit():
        try:
            normalise_value(name, form.value.data or "")
        except ValueError as exc:
            form.value.errors = [str(exc)]
    if form.errors:
        return render_list(name, add_form=form, code=400)
    user = access.current_user()
    assert user is not None
    lists = state().storage.lists
    with lists_lock():
        conflict = list_conflict(name, [normalise_value(name, form.value.data or "")])
        if conflict is not None:
            return render_list(name, conflict=conflict, code=409)
        before = lists.get(name, form.value.data or "")
        entry = lists.add(
            name, form.value.data or "", expires_at=_expiry(form.days.data),
            comment=(form.comment.data or "").strip(), added_by=user.username, source="ui",
        )
    expires = f"expires {entry.expires_at:%Y-%m-%d %H:%M} UTC" if entry.expires_at else "no expiry"
    access.audit("lists.add", f"{name}: {entry.value}",
                 _describe(before) if before else None, _describe(entry))
    flash(f"{entry.value} is on the {name} ({expires}).", "success")
    return redirect(url_for("lists.show", name=name))


def _describe(entry: object) -> str:
    expires = getattr(entry, "expires_at", None)
    comment = getattr(entry, "comment", "")
    text = f"expires {expires:%Y-%m-%d %H:%M} UTC" if expires else "no expiry"
    return f"{text}; {comment}" if comment else text


@bp.post("/lists/<name>/remove")
@access.operator
def remove(name: str) -> Response | tuple[str, int]:
    _list_or_404(name)
    form = ListRemoveForm()
    if not form.validate_on_submit():
        flash("Nothing removed: the form was incomplete.", "error")
        return render_list(name, code=400)
    lists = state().storage.lists
    value = form.value.data or ""
    try:
        with lists_lock():
            conflict = list_conflict(name, [normalise_value(name, value)], removing=True)
            if conflict is not None:
                return render_list(name, conflict=conflict, code=409)
            before = lists.get(name, value)
            removed = lists.remove(name, value)
    except ValueError as exc:
        flash(f"Nothing removed: {exc}", "error")
        return render_list(name, code=400)
    if removed:
        access.audit("lists.remove", f"{name}: {value}", _describe(before), None)
        flash(f"{value} removed from the {name}.", "success")
    else:
        flash(f"{value} was not on the {name}.", "warning")
    return redirect(url_for("lists.show", name=name))


def parse_import(name: str, text: str) -> tuple[list[tuple[str, str]], list[str]]:
    """Lines "value" or "value # comment"; blank lines and lines starting with # are
    skipped. Returns the (value, comment) pairs and an error per bad line."""
    entries: list[tuple[str, str]] = []
    errors: list[str] = []
    lines = text.splitlines()
    if len(lines) > MAX_IMPORT_LINES:
        return [], [f"more than {MAX_IMPORT_LINES} lines; split the file"]
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        value, _, comment = stripped.partition(" #")
        value = value.strip()
        try:
            entries.append((normalise_value(name, value), comment.strip()[:500]))
        except ValueError as exc:
            errors.append(f"line {number}: {exc}")
    return entries, errors


@bp.post("/lists/<name>/import")
@access.operator
def import_entries(name: str) -> Response | tuple[str, int]:
    _list_or_404(name)
    form = ListImportForm(prefix=IMPORT_PREFIX)
    if not form.validate_on_submit():
        return render_list(name, import_form=form, code=400)
    text = form.text.data or ""
    upload = request.files.get(form.file.name)
    if upload is not None and upload.filename:
        try:
            text = upload.read().decode("utf-8")
        except UnicodeDecodeError:
            return render_list(name, import_form=form,
                               import_errors=["the file is not UTF-8 text"], code=400)
    entries, errors = parse_import(name, text)
    if not entries and not errors:
        errors = ["no entries given"]
    if errors:
        return render_list(name, import_form=form, import_errors=errors, code=400)
    user = access.current_user()
    assert user is not None
    by_comment: dict[str, list[str]] = {}
    for value, comment in entries:
        by_comment.setdefault(comment, []).append(value)
    added = 0
    with lists_lock():
        conflict = list_conflict(name, list(dict.fromkeys(v for v, _ in entries)))
        if conflict is not None:
            return render_list(name, import_form=form, conflict=conflict, code=409)
        for comment, values in by_comment.items():
            added += state().storage.lists.add_many(
                name, values, expires_at=_expiry(form.days.data), comment=comment,
                added_by=user.username, source="ui",
            )
    access.audit("lists.import", name, None, f"{added} entries")
    flash(f"Imported {added} entries into the {name}.", "success")
    return redirect(url_for("lists.show", name=name))


@bp.get("/lists/<name>/export")
@access.operator
def export(name: str) -> Response:
    _list_or_404(name)
    lists = state().storage.lists
    lines = [f"# postwall {name}, exported {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"]
    offset = 0
    while True:
        batch = lists.entries(name, limit=5000, offset=offset)
        if not batch:
            break
        for entry in batch:
            lines.append(f"{entry.value} # {entry.comment}" if entry.comment else entry.value)
        offset += len(batch)
    response = Response("\n".join(lines) + "\n", mimetype="text/plain; charset=utf-8")
    response.headers["Content-Disposition"] = f'attachment; filename="postwall-{name}.txt"'
    return response
