"""The DKIM records to publish, per domain and selector (read-only; keys are made with
`postwall dkim` on the appliance, where the private keys stay)."""

from __future__ import annotations

from flask import Blueprint, render_template

from appliance import dkim_keys
from webui import access
from webui.state import state

bp = Blueprint("dkim", __name__)


@bp.get("/dkim")
@access.admin
def index() -> str:
    data_dir = state().data_dir
    root = data_dir / "dkim"
    names = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    domains: list[tuple[str, list[dkim_keys.DKIMRecord], str | None]] = []
    for name in names:
        try:
            domains.append((name, dkim_keys.dns_records(data_dir, name), None))
        except dkim_keys.DKIMKeyError as exc:  # one broken key must not hide the others
            domains.append((name, [], str(exc)))
    return render_template("dkim.html", domains=domains,
                           signing=state().loaded.config.dkim_signing)
