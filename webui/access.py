"""Who may see what: every view declares an access rule, and a request to a view without
one is refused (fail closed; a test also lists every route and its rule).

Rules: `public` (login page, static files), `public_with_token` (no login: the view
itself checks a signed token that is the credential, e.g. the block-report digest links),
`operator` (any signed-in user: lists, quarantine, message log, analyzer, dashboard,
connections, configuration read-only) and `admin` (everything, including changes to the
configuration and to users).

Sessions are signed cookies holding the user name, the account's `session_version` and
the login time; every request re-reads the account, so a new password, a new role, a
lock or a removal ends older sessions at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from flask import abort, flash, g, redirect, request, session, url_for
from werkzeug.wrappers import Response

from appliance.storage.users import User
from webui.state import state

PUBLIC = "public"
PUBLIC_WITH_TOKEN = "public_with_token"  # noqa: S105 - a rule name
OPERATOR = "operator"
ADMIN = "admin"
RULES = (PUBLIC, PUBLIC_WITH_TOKEN, OPERATOR, ADMIN)
# Rules under which a view is reached without a session.
NO_LOGIN = frozenset({PUBLIC, PUBLIC_WITH_TOKEN})
RULE_ATTRIBUTE = "access_rule"
# Views a user who must change the password may still reach.
PASSWORD_CHANGE_ENDPOINTS = frozenset({"auth.password", "auth.logout", "static"})

F = TypeVar("F", bound=Callable[..., Any])


def _rule(level: str) -> Callable[[F], F]:
    def decorate(view: F) -> F:
        setattr(view, RULE_ATTRIBUTE, level)
        return view

    return decorate


public = _rule(PUBLIC)
# The view authenticates the request by a signed token (and rate-limits failures);
# declared apart from `public` so that the route inventory shows which views do.
public_with_token = _rule(PUBLIC_WITH_TOKEN)
operator = _rule(OPERATOR)
admin = _rule(ADMIN)


def rule_of(view: Callable[..., Any] | None) -> str | None:
    rule = getattr(view, RULE_ATTRIBUTE, None)
    return rule if rule in RULES else None


@dataclass(frozen=True)
class SignedIn:
    username: str
    role: str
    must_change_password: bool

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN


def start_session(user: User) -> None:
    session.clear()  # a fresh session (and CSRF token) at every login: no fixation
    session.permanent = True
    session["user"] = user.username
    session["ver"] = user.session_version
    session["auth_at"] = int(time.time())
    session["seen"] = int(time.time())


def current_user() -> SignedIn | None:
    """The signed-in user of this request, or None (an invalid session is cleared)."""
    if "signed_in" in g:
        return g.signed_in  # type: ignore[no-any-return]
    g.signed_in = None
    username = session.get("user")
    if not isinstance(username, str):
        return None
    settings = state().loaded.config.webui
    now = int(time.time())
    auth_at = session.get("auth_at")
    seen = session.get("seen")
    user = state().storage.users.get(username)
    if (
        user is None
        or user.session_version != session.get("ver")
        or user.is_locked()
        or not isinstance(auth_at, int)
        or not isinstance(seen, int)
        or now - auth_at > settings.session_max_hours * 3600
        or now - seen > settings.session_idle_minutes * 60
    ):
        session.clear()
        return None
    if now - seen >= 30:  # the idle clock; rewriting the cookie on every request is noise
        session["seen"] = now
    g.signed_in = SignedIn(user.username, user.role, user.must_change_password)
    return g.signed_in  # type: ignore[no-any-return]


def enforce() -> Response | None:
    """before_request: apply the access rule of the view this request is routed to."""
    if request.endpoint is None:
        return None  # 404/405: nothing is served
    from flask import current_app

    view = current_app.view_functions.get(request.endpoint)
    rule = rule_of(view)
    if rule is None:
        abort(403)  # a view without a rule is a bug; never serve it
    if rule in NO_LOGIN:
        return None
    user = current_user()
    if user is None:
        if request.method == "GET":
            return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
        return redirect(url_for("auth.login"))
    if user.must_change_password and request.endpoint not in PASSWORD_CHANGE_ENDPOINTS:
        flash("Choose a new password before you continue.", "warning")
        return redirect(url_for("auth.password"))
    if rule == ADMIN and not user.is_admin:
        abort(403)
    return None


def safe_next(target: str | None) -> str | None:
    """A redirect target after login: only a path on this site."""
    if not target or not target.startswith("/") or target.startswith("//"):
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or "\\" in target:
        return None
    return target


def client_ip() -> str:
    return request.remote_addr or ""


def audit(action: str, target: str, old: object = None, new: object = None) -> None:
    """Record a change by the signed-in user (old -> new, as text)."""
    user = current_user()
    state().storage.audit.record(
        user.username if user else "-",
        action,
        target,
        None if old is None else str(old),
        None if new is None else str(new),
        client_ip=client_ip(),
    )
