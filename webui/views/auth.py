"""Login, logout and the password change (forced at the first login)."""

from __future__ import annotations

from datetime import timedelta

from flask import Blueprint, flash, redirect, render_template, request, session, url_for
from werkzeug.wrappers import Response

from appliance.storage.types import utcnow
from webui import access
from webui.forms import LoginForm, PasswordForm
from webui.passwords import hash_password, needs_rehash, password_problem, verify_password
from webui.state import state

bp = Blueprint("auth", __name__)

IP_WINDOW = timedelta(minutes=15)
FAILURE_MEMORY = timedelta(days=1)
LOGIN_FAILED = (
    "Wrong user name or password, or the account is locked: {failures} wrong passwords in "
    "a row lock it for {minutes} minutes."
)


@bp.route("/login", methods=["GET", "POST"])
@access.public
def login() -> str | Response | tuple[str, int]:
    form = LoginForm()
    if request.method == "GET":
        form.next.data = request.args.get("next", "")
        if access.current_user() is not None:
            return redirect(url_for("dashboard.index"))
    if not form.validate_on_submit():
        return render_template("login.html", form=form), 400 if request.method == "POST" else 200
    ui = state()
    settings = ui.loaded.config.webui
    users = ui.storage.users
    ip = access.client_ip()
    username = (form.username.data or "").strip().lower()
    if users.failed_logins_since(ip, utcnow() - IP_WINDOW) >= settings.login_failures_per_ip:
        form.form_errors.append(
            "Too many failed logins from your address. Wait a few minutes and try again."
        )
        return render_template("login.html", form=form), 429
    user = users.get(username)
    password = form.password.data or ""
    good = verify_password(user.password_hash if user else None, password)
    if user is None or not good or user.is_locked():
        users.note_failed_login(ip, username)
        users.purge_failed_logins(utcnow() - FAILURE_MEMORY)  # keeps the table small
        if user is not None and not user.is_locked():
            updated = users.record_failure(
                username, max_failures=settings.login_max_failures,
                lockout=timedelta(minutes=settings.login_lockout_minutes),
            )
            if updated is not None and updated.is_locked():
                ui.storage.audit.record(username, "auth.locked", username,
                                        new_value=f"until {updated.locked_until:%H:%M} UTC",
                                        client_ip=ip)
        form.form_errors.append(LOGIN_FAILED.format(
            failures=settings.login_max_failures, minutes=settings.login_lockout_minutes
        ))
        return render_template("login.html", form=form), 401
    if needs_rehash(user.password_hash):
        users.set_password(username, hash_password(password),
                           must_change=user.must_change_password)
        user = users.get(username) or user
    users.record_success(username)
    access.start_session(user)
    ui.storage.audit.record(username, "auth.login", username, client_ip=ip)
    if user.must_change_password:
        flash("This is your first login with this password: choose your own now.", "warning")
        return redirect(url_for("auth.password"))
    return redirect(access.safe_next(form.next.data) or url_for("dashboard.index"))


@bp.post("/logout")
@access.public  # a POST with a valid CSRF token; harmless without a session
def logout() -> Response:
    user = access.current_user()
    if user is not None:
        access.audit("auth.logout", user.username)
    session.clear()
    flash("You are logged out.", "info")
    return redirect(url_for("auth.login"))


@bp.route("/account/password", methods=["GET", "POST"])
@access.operator
def password() -> str | Response | tuple[str, int]:
    form = PasswordForm()
    user = access.current_user()
    assert user is not None
    if not form.validate_on_submit():
        code = 400 if request.method == "POST" else 200
        return render_template("password.html", form=form, forced=user.must_change_password), code
    ui = state()
    account = ui.storage.users.get(user.username)
    assert account is not None
    new = form.new.data or ""
    if not verify_password(account.password_hash, form.current.data or ""):
        form.current.errors = ["not your current password"]
    elif new != form.confirm.data:
        form.confirm.errors = ["the two new passwords differ"]
    elif verify_password(account.password_hash, new):
        form.new.errors = ["must differ from the current password"]
    else:
        problem = password_problem(
            new, username=user.username, min_length=ui.loaded.config.webui.password_min_length
        )
        if problem:
            form.new.errors = [problem]
    if form.errors:
        return render_template("password.html", form=form,
                               forced=user.must_change_password), 400
    ui.storage.users.set_password(user.username, hash_password(new), must_change=False)
    updated = ui.storage.users.get(user.username)
    assert updated is not None
    access.start_session(updated)  # this session goes on; every other one ends
    access.audit("auth.password_changed", user.username)
    flash("Password changed. Other sessions of your account have ended.", "success")
    return redirect(url_for("dashboard.index"))
