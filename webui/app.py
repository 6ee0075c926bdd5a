"""The application factory: settings, CSRF, access rules, security headers, errors."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from flask import Flask, render_template, request
from flask_wtf.csrf import CSRFError, CSRFProtect

from appliance.storage.facade import Storage
from webui import access
from webui.state import EXTENSION, UIState, load_or_create_secret

csrf = CSRFProtect()

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "object-src 'none'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)


def create_app(
    config_path: Path | None,
    *,
    settings: Mapping[str, Any] | None = None,
    storage: Storage | None = None,
) -> Flask:
    """The application for the appliance configured by `config_path` (the base file).

    `settings` overrides Flask settings (tests); `storage` reuses an open Storage."""
    ui = UIState.open(config_path, storage)
    config = ui.loaded.config
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=load_or_create_secret(config.data_dir),
        SESSION_COOKIE_NAME="__Host-postwall",  # Secure, Path=/ and no Domain, enforced
        SESSION_COOKIE_SECURE=True,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        PERMANENT_SESSION_LIFETIME=timedelta(minutes=config.webui.session_idle_minutes),
        SESSION_REFRESH_EACH_REQUEST=True,
        WTF_CSRF_TIME_LIMIT=config.webui.session_max_hours * 3600,
        MAX_CONTENT_LENGTH=config.limits.max_message_size + 1024 * 1024,
        TEMPLATES_AUTO_RELOAD=False,
    )
    if settings:
        app.config.update(settings)
    app.extensions[EXTENSION] = ui
    csrf.init_app(app)

    from webui.views import register_blueprints

    register_blueprints(app)
    app.view_functions["static"].access_rule = access.PUBLIC  # type: ignore[attr-defined]
    app.before_request(access.enforce)
    app.after_request(_security_headers)
    _register_errors(app)
    _register_template_helpers(app)
    return app


def _security_headers(response: Any) -> Any:
    headers = response.headers
    headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Referrer-Policy", "same-origin")
    headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    if request.endpoint != "static":
        headers["Cache-Control"] = "no-store"
    return response


def _register_errors(app: Flask) -> None:
    def page(code: int, title: str, text: str) -> tuple[str, int]:
        return render_template("error.html", code=code, title=title, text=text), code

    @app.errorhandler(CSRFError)
    def csrf_error(error: CSRFError) -> tuple[str, int]:
        return page(400, "Form expired", "The form was missing its security token or it "
                    f"had expired ({error.description}). Go back, reload the page and try "
                    "again.")

    @app.errorhandler(403)
    def forbidden(error: Exception) -> tuple[str, int]:
        return page(403, "Not allowed", "Your role does not allow this page or action.")

    @app.errorhandler(404)
    def not_found(error: Exception) -> tuple[str, int]:
        return page(404, "Not found", "There is nothing at this address (any more).")

    @app.errorhandler(413)
    def too_large(error: Exception) -> tuple[str, int]:
        return page(413, "Too large", "The upload is larger than the appliance accepts.")


def _register_template_helpers(app: Flask) -> None:
    from webui import formatting

    app.jinja_env.filters.update(formatting.FILTERS)
    from webui.state import state

    app.jinja_env.globals.update(
        current_user=access.current_user,
        action_class=formatting.action_class,
        config_error=lambda: state().load_error,
    )
