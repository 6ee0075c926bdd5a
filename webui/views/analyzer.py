"""The mail analyzer: paste or upload a message and see every symbol, the total and the
action, from the same code path as `postwall analyze` (appliance.analysis)."""

from __future__ import annotations

import asyncio
from typing import Any

from flask import Blueprint, render_template, request

from appliance.analysis import Analysis, analyze
from appliance.runtime import Runtime
from webui import access
from webui.forms import AnalyzerForm
from webui.state import state

bp = Blueprint("analyzer", __name__)


def run_analysis(content: bytes, sender: str | None, recipients: list[str] | None,
                 client_ip: str, helo: str) -> Analysis:
    ui = state()
    runtime = Runtime(ui.loaded, ui.storage, record=False)

    async def run() -> Analysis:
        try:
            return await analyze(runtime, content, sender=sender, recipients=recipients,
                                 client_ip=client_ip, helo=helo)
        finally:
            await runtime.close()

    return asyncio.run(run())


@bp.route("/analyzer", methods=["GET", "POST"])
@access.operator
def index() -> Any:
    form = AnalyzerForm()
    result = None
    if request.method == "POST":
        content = b""
        if form.validate_on_submit():
            upload = request.files.get("file")
            if upload is not None and upload.filename:
                content = upload.read()
            elif form.message.data:
                text = form.message.data.replace("\r\n", "\n").replace("\n", "\r\n")
                content = text.encode("utf-8")
            if not content.strip():
                form.message.errors = ["paste a message or choose a file"]
        if form.errors:
            return render_template("analyzer.html", form=form, result=None), 400
        recipients = [r.strip() for r in (form.recipients.data or "").split(",") if r.strip()]
        sender = (form.sender.data or "").strip() or None
        result = run_analysis(content, sender, recipients or None,
                              (form.client_ip.data or "").strip(), (form.helo.data or "").strip())
        result_size = len(content)
        return render_template("analyzer.html", form=form, result=result, size=result_size)
    return render_template("analyzer.html", form=form, result=result)
