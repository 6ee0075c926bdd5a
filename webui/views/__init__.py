"""The blueprints, one per concern."""

from __future__ import annotations

from flask import Flask


def register_blueprints(app: Flask) -> None:
    from webui.views import (
        analyzer,
        auth,
        backups,
        blockreport,
        configuration,
        connections,
        dashboard,
        dkim,
        lists,
        messages,
        quarantine,
        users,
    )

    for module in (auth, dashboard, configuration, lists, messages, quarantine, analyzer,
                   connections, users, blockreport, dkim, backups):
        app.register_blueprint(module.bp)
