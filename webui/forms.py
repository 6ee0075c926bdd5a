"""The fixed forms of the UI (flask-wtf: each carries and checks its CSRF token).

The configuration page builds its fields from the schema instead (see settings_form);
CSRFProtect guards it like every other POST.
"""

from __future__ import annotations

import ipaddress

from flask_wtf import FlaskForm
from flask_wtf.file import FileField
from wtforms import (
    HiddenField,
    IntegerField,
    PasswordField,
    SelectField,
    StringField,
    TextAreaField,
)
from wtforms.validators import (
    DataRequired,
    InputRequired,
    Length,
    NumberRange,
    Optional,
    ValidationError,
)

from appliance.links import MAX_TOKEN
from appliance.storage.users import ROLES


class LoginForm(FlaskForm):
    username = StringField("User name", validators=[DataRequired(), Length(max=64)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=1024)])
    next = HiddenField()


class PasswordForm(FlaskForm):
    current = PasswordField("Current password", validators=[DataRequired(), Length(max=1024)])
    new = PasswordField("New password", validators=[DataRequired(), Length(max=1024)])
    confirm = PasswordField("New password again", validators=[DataRequired()])


class ListAddForm(FlaskForm):
    value = StringField("Value", validators=[DataRequired(), Length(max=1000)],
                        description="An address, @domain, *.wildcard or /regex/; "
                                    "a network (CIDR) for the IP lists.")
    comment = StringField("Comment", validators=[Optional(), Length(max=500)])
    days = IntegerField(
        "Expires after (days)", validators=[Optional(), NumberRange(1, 36500)],
        description="Empty: never.",
    )


class ListImportForm(FlaskForm):
    text = TextAreaField("Entries, one per line", validators=[Optional()])
    file = FileField("…or a file")
    days = IntegerField(
        "Expires after (days)", validators=[Optional(), NumberRange(1, 36500)],
        description="Empty: never.",
    )


class ListRemoveForm(FlaskForm):
    value = HiddenField(validators=[DataRequired(), Length(max=1000)])


def _ip(form: FlaskForm, field: StringField) -> None:
    try:
        ipaddress.ip_address((field.data or "").strip())
    except ValueError:
        raise ValidationError("not an IP address") from None


class AnalyzerForm(FlaskForm):
    message = TextAreaField("Message source (headers and body)", validators=[Optional()])
    file = FileField("…or upload an .eml file")
    sender = StringField("Envelope sender", validators=[Optional(), Length(max=320)],
                         description="Empty: taken from Return-Path or From.")
    recipients = StringField("Envelope recipients", validators=[Optional(), Length(max=5000)],
                             description="Comma-separated. Empty: taken from To and Cc.")
    client_ip = StringField("Client IP", default="192.0.2.1",
                            validators=[InputRequired(), _ip])
    helo = StringField("HELO name", default="unknown",
                       validators=[InputRequired(), Length(max=255)])


class QuarantineActionForm(FlaskForm):
    """Release, delete, report: the message is named by hidden fields."""

    folder = HiddenField(validators=[DataRequired()])
    txid = HiddenField(validators=[DataRequired()])


class QuarantineListForm(QuarantineActionForm):
    list_name = SelectField("List", choices=["whitelist", "blacklist", "redlist", "noprocessing"])
    what = SelectField("Entry", choices=["sender", "domain"])


class DigestLinkForm(FlaskForm):
    """The confirmation of a block-report link: the signed token travels in the form,
    so it is not repeated in the address bar of the result page."""

    token = HiddenField(validators=[DataRequired(), Length(max=MAX_TOKEN)])


class UserAddForm(FlaskForm):
    username = StringField("User name", validators=[DataRequired(), Length(max=64)])
    role = SelectField("Role", choices=list(ROLES), default="operator")


class UserRoleForm(FlaskForm):
    role = SelectField("Role", choices=list(ROLES))


class ConfirmForm(FlaskForm):
    """A button that changes something and needs nothing but the CSRF token."""
