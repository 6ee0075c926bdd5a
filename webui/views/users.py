"""Accounts (admins only): add a user with a one-time password, change a role, reset a
password, unlock, remove; and the audit log of every change made in the UI."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from appliance.storage.users import UnknownUser, UserExists, validate_username
from webui import access
from webui.forms import ConfirmForm, UserAddForm, UserRoleForm
from webui.passwords import generate_password, hash_password
from webui.state import state

bp = Blueprint("users", __name__)

AUDIT_PAGE_SIZE = 100


def render_users(add_form: UserAddForm | None = None, code: int = 200,
                 new_password: tuple[str, str] | None = None) -> tuple[str, int]:
    return render_template(
        "users.html",
        users=state().storage.users.all(),
        add_form=add_form or UserAddForm(formdata=None),
        role_form=UserRoleForm(formdata=None),
        confirm_form=ConfirmForm(formdata=None),
        new_password=new_password,
    ), code


@bp.get("/users")
@access.admin
def index() -> tuple[str, int]:
    return render_users()


@bp.post("/users/add")
@access.admin
def add() -> tuple[str, int]:
    form = UserAddForm()
    username = (form.username.data or "").strip()
    if form.validate_on_submit():
        try:
            validate_username(username)
        except ValueError as exc:
            form.username.errors = [str(exc)]
    if form.errors:
        return render_users(form, 400)
    password = generate_password()
    try:
        state().storage.users.create(username, hash_password(password), form.role.data or "",
                                     must_change_password=True)
    except UserExists as exc:
        form.username.errors = [str(exc)]
        return render_users(form, 400)
    access.audit("users.add", username, None, f"role {form.role.data}")
    # Shown once, in this response only: the admin hands it over, the user must change it.
    return render_users(new_password=(username, password))


def _target(username: str) -> str:
    if state().storage.users.get(username) is None:
        abort(404)
    return username


def _confirmed() -> None:
    if not ConfirmForm().validate_on_submit():
        abort(400)


def _last_admin(username: str) -> bool:
    users = state().storage.users
    user = users.get(username)
    return user is not None and user.role == "admin" and users.count_admins() <= 1


@bp.post("/users/<username>/role")
@access.admin
def role(username: str) -> Any:
    _target(username)
    form = UserRoleForm()
    if not form.validate_on_submit():
        flash("Role not changed: choose admin or operator.", "error")
        return render_users(code=400)
    user = state().storage.users.get(username)
    assert user is not None
    if form.role.data != "admin" and _last_admin(username):
        flash("Role not changed: the last administrator must stay one.", "error")
        return render_users(code=400)
    if form.role.data != user.role:
        state().storage.users.set_role(username, form.role.data or "")
        access.audit("users.role", username, user.role, form.role.data)
        flash(f"{username} is now {form.role.data}; their sessions have ended.", "success")
    return redirect(url_for("users.index"))


@bp.post("/users/<username>/reset-password")
@access.admin
def reset_password(username: str) -> Any:
    _target(username)
    _confirmed()
    password = generate_password()
    state().storage.users.set_password(username, hash_password(password), must_change=True)
    access.audit("users.reset_password", username)
    current = access.current_user()
    if current is not None and current.username == username:
        return redirect(url_for("auth.login"))  # own password reset: that session ended
    return render_users(new_password=(username, password))


@bp.post("/users/<username>/unlock")
@access.admin
def unlock(username: str) -> Response:
    _target(username)
    _confirmed()
    state().storage.users.unlock(username)
    access.audit("users.unlock", username)
    flash(f"{username} is unlocked.", "success")
    return redirect(url_for("users.index"))


@bp.post("/users/<username>/delete")
@access.admin
def delete(username: str) -> Any:
    _target(username)
    _confirmed()
    current = access.current_user()
    if current is not None and current.username == username:
        flash("You cannot remove your own account.", "error")
        return render_users(code=400)
    if _last_admin(username):
        flash("The last administrator cannot be removed.", "error")
        return render_users(code=400)
    try:
        user = state().storage.users.get(username)
        state().storage.users.delete(username)
    except UnknownUser:
        abort(404)
    access.audit("users.delete", username, f"role {user.role if user else '?'}", None)
    flash(f"{username} removed.", "success")
    return redirect(url_for("users.index"))


@bp.get("/audit")
@access.admin
def audit_log() -> str:
    log = state().storage.audit
    who = request.args.get("user", "").strip()[:64] or None
    action = request.args.get("action", "").strip()[:64] or None
    text = request.args.get("q", "").strip()[:200] or None
    page = max(1, request.args.get("page", 1, type=int) or 1)
    total = log.count(username=who, action=action, text=text)
    entries = log.search(username=who, action=action, text=text, limit=AUDIT_PAGE_SIZE,
                         offset=(page - 1) * AUDIT_PAGE_SIZE)
    return render_template(
        "audit.html", entries=entries, total=total, page=page,
        pages=max(1, -(-total // AUDIT_PAGE_SIZE)),
        query={k: v for k, v in (("user", who), ("action", action), ("q", text)) if v},
    )
