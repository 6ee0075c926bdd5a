"""The configuration: every setting of the schema by section, with its help text, where
its value comes from, inline errors, reset to the base file, and apply = write the
overrides file atomically, then reload the proxy without dropping connections."""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import yaml
from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from appliance.config import loader
from appliance.config.schema import Config
from appliance.control import ControlError, config_fingerprint
from appliance.runtime import Runtime
from webui import access, concurrency
from webui import settings_form as sf
from webui.state import WEBUI_DIRNAME, state

bp = Blueprint("configuration", __name__)

RELOAD_WAIT_SECONDS = 15.0


def overrides_lock() -> AbstractContextManager[None]:
    """One change at a time, across threads and processes: read, plan, write."""
    return concurrency.edit_lock(state().data_dir / WEBUI_DIRNAME, "config")


def documents() -> tuple[dict[str, Any], dict[str, Any]]:
    base, overrides, _ = read_documents()
    return base, overrides


def read_documents() -> tuple[dict[str, Any], dict[str, Any], str]:
    """The base and overrides documents and their version, from one read of each file
    (so the version always describes exactly the documents returned)."""
    ui = state()
    base_bytes = _read_bytes(ui.base_path) if ui.base_path else b""
    path = ui.overrides_path
    overrides_bytes = _read_bytes(path) if path.exists() else b""
    base = _parse_yaml(ui.base_path, base_bytes) if ui.base_path else {}
    overrides = _parse_yaml(path, overrides_bytes)
    return base, overrides, concurrency.config_version(base_bytes, overrides_bytes)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise loader.ConfigError(f"{path}: cannot read: {exc.strerror}") from exc


def _parse_yaml(path: Path, data: bytes) -> dict[str, Any]:
    try:
        document = yaml.safe_load(data.decode("utf-8")) if data else None
    except UnicodeDecodeError as exc:
        raise loader.ConfigError(f"{path}: not UTF-8 text") from exc
    except yaml.YAMLError as exc:
        raise loader.ConfigError(f"{path}: invalid YAML: {exc}") from exc
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise loader.ConfigError(f"{path}: the top level must be a mapping of settings")
    return document


def versions() -> concurrency.ConfigVersions:
    return concurrency.ConfigVersions(
        state().data_dir / WEBUI_DIRNAME / concurrency.VERSIONS_DIRNAME)


@bp.get("/config")
@access.operator
def index() -> Response:
    return redirect(url_for("configuration.show", key=sf.GENERAL))


@bp.get("/config/<key>")
@access.operator
def show(key: str) -> str:
    return render_section(key)


def render_section(
    key: str, *, errors: dict[str, str] | None = None, raw: dict[str, str] | None = None,
    submitted: dict[str, Any] | None = None, code: int = 200,
    conflict: concurrency.Conflict | None = None,
) -> Any:
    spec = sf.section(key)
    if spec is None:
        abort(404)
    ui = state()
    loaded = ui.loaded
    base, overrides, version = read_documents()
    try:  # what is shown is exactly what `version` describes
        current = sf.effective_document(base, overrides)
    except Exception:  # broken by hand: the UI keeps showing the last valid configuration
        current = loaded.config.model_dump(mode="json")
    versions().remember(version, base, overrides)
    try:
        without = Config.model_validate(base).model_dump(mode="json")
    except Exception:  # the base file alone may be invalid; the merged one is not
        without = current
    rows = []
    for f in spec.fields:
        value = (submitted or {}).get(f.path, sf.get_path(current, f.path, None))
        rows.append({
            "spec": f,
            "value": sf.display_value(f, value),
            "raw": (raw or {}).get(f.path),
            "error": (errors or {}).get(f.path),
            "source": sf.source_of(loaded.provenance, f.path),
            "base_value": sf.show(sf.get_path(without, f.path, None)),
        })
    user = access.current_user()
    return render_template(
        "configuration.html",
        sections=sf.sections(),
        section=spec,
        rows=rows,
        section_error=(errors or {}).get(""),
        editable=bool(user and user.is_admin) and not spec.readonly,
        base_path=ui.base_path,
        overrides_path=ui.overrides_path,
        config_version=version,
        loaded_at=concurrency.now_text(),
        conflict=conflict,
    ), code


@bp.post("/config/<key>")
@access.admin
def save(key: str) -> Any:
    spec = sf.section(key)
    if spec is None or spec.readonly:
        abort(404)
    with overrides_lock():
        base, overrides, version = read_documents()
        current = sf.effective_document(base, overrides)
        parsed = sf.parse_section(spec, request.form, current)
        if parsed.errors:
            return render_section(key, errors=parsed.errors, raw=parsed.raw,
                                  submitted=parsed.values, code=400)
        conflict = settings_conflict(spec, version, current, parsed.values)
        if conflict is not None:
            return render_section(key, conflict=conflict, code=409)
        plan = sf.plan_change(base, overrides, parsed.values, list(spec.fields))
        if not plan.errors and plan.config is not None:
            problem = pipeline_problem(plan.config)
            if problem:
                plan.errors[""] = problem
        if plan.errors:
            return render_section(key, errors=plan.errors, raw=parsed.raw,
                                  submitted=parsed.values, code=400)
        if not plan.changes:
            flash("Nothing changed.", "info")
            return redirect(url_for("configuration.show", key=key))
        write(plan.overrides, base)
    for path, old, new in plan.changes:
        access.audit("config.set", path, sf.show(old), sf.show(new))
    assert plan.config is not None
    names = ", ".join(path for path, _, _ in plan.changes)
    apply_and_report(plan.config, f"Saved {names}.")
    return redirect(url_for("configuration.show", key=key))


@bp.post("/config/reset")
@access.admin
def reset() -> Any:
    path = request.form.get("path", "")
    key = request.form.get("section", sf.GENERAL)
    fields = {f.path: f for s in sf.sections() for f in s.fields}
    if path not in fields or fields[path].readonly:
        abort(404)
    with overrides_lock():
        base, overrides, version = read_documents()
        spec = sf.section(key)
        if spec is not None:
            current = sf.effective_document(base, overrides)
            conflict = settings_conflict(spec, version, current, {}, only=[path])
            if conflict is not None:
                return render_section(key, conflict=conflict, code=409)
        plan = sf.plan_reset(base, overrides, path)
        if not plan.errors and plan.config is not None:
            problem = pipeline_problem(plan.config)
            if problem:
                plan.errors[path] = problem
        if plan.errors:
            return render_section(key, errors=plan.errors, code=400)
        write(plan.overrides, base)
    for changed, old, new in plan.changes:
        access.audit("config.reset", changed, sf.show(old), sf.show(new))
    if not plan.changes:  # the override equalled the base value: only the source changed
        access.audit("config.reset", path)
    assert plan.config is not None
    apply_and_report(plan.config, f"{path} is back to the base file's value.")
    return redirect(url_for("configuration.show", key=key))


def settings_conflict(
    spec: sf.SectionSpec, version: str, current: dict[str, Any], submitted: dict[str, Any],
    only: list[str] | None = None,
) -> concurrency.Conflict | None:
    """None if the page was rendered from `version`, or if only settings outside this
    section (or outside `only`) changed since; else what changed, by whom, and the
    submitted values that were not saved. A form without a version (a script posting
    single fields) is not checked: it changes exactly the fields it names."""
    rendered = request.form.get("config_version", "")
    if not rendered or rendered == version:
        return None
    since = concurrency.parse_time(request.form.get("loaded_at"))
    paths = only or [f.path for f in spec.fields if not f.readonly]
    snapshot = versions().recall(rendered)
    before: dict[str, Any] | None = None
    if snapshot is not None:
        try:
            before = sf.effective_document(snapshot.base, snapshot.overrides)
        except Exception:
            before = None
    if before is None:
        return concurrency.Conflict([], message=(
            "The configuration changed since this page was loaded, and what it looked like "
            "then is no longer known: nothing was saved. Check the values below and apply "
            "again."))
    changed = concurrency.changed_paths(before, current, paths)
    if not changed:
        return None  # others changed other sections: this save merges with theirs
    audit = state().storage.audit.search(action="config.", limit=concurrency.AUDIT_LOOKBACK)
    fields = {f.path: f for f in spec.fields}
    changes = [
        concurrency.Change(
            path, sf.show(sf.get_path(before, path, None)),
            sf.show(sf.get_path(current, path, None)),
            concurrency.who(audit, lambda e, p=path: e.target == p, since,
                            "outside the web UI (the base or overrides file was edited)"),
            sf.show(submitted[path]) if path in submitted else None,
        )
        for path in changed
    ]
    unsaved = [
        concurrency.Change(path, sf.show(sf.get_path(before, path, None)), "", "",
                           sf.show(value))
        for path, value in submitted.items()
        if path in fields and not sf._same(sf.get_path(before, path, None), value)
    ]
    return concurrency.Conflict(changes, unsaved, (
        "Another change to these settings was saved after you loaded this page; nothing "
        "of yours was saved. The page now shows the current values: redo your changes "
        "below and apply again."))


def pipeline_problem(config: Config) -> str | None:
    """What the proxy's preflight would refuse: every filter is built from `config`."""
    ui = state()
    loaded = loader.LoadedConfig(config, ui.base_path, ui.overrides_path, {})
    try:
        Runtime(loaded, None, record=False)
    except (ValueError, loader.ConfigError) as exc:
        return f"the proxy could not use this configuration: {exc}"
    return None


def write(overrides: dict[str, Any], base: dict[str, Any]) -> None:
    ui = state()
    path: Path = ui.overrides_path
    loader.write_overrides(path, overrides, base=base)
    ui.forget()


def apply_and_report(config: Config, saved: str) -> None:
    """Reload the proxy and say what happened: applied, or why not (yet)."""
    control = state().control()
    try:
        control.reload()
    except ControlError as exc:
        flash(f"{saved} The proxy was not reloaded ({exc}); it uses the saved configuration "
              "when it starts.", "warning")
        return
    workers = control.wait_for_config(config_fingerprint(config), RELOAD_WAIT_SECONDS)
    behind = [w for w in workers if w.config != config_fingerprint(config)]
    if not workers or behind:
        flash(f"{saved} The proxy has not picked it up after {RELOAD_WAIT_SECONDS:g} s: look at "
              "its log (the reload may have been refused).", "warning")
        return
    flash(f"{saved} Applied: {len(workers)} worker(s) reloaded without dropping connections.",
          "success")
