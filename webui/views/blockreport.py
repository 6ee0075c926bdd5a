"""The block-report digest links, `<block_reports.base_url>/blockreport/link?token=…`.

No login: the signed token is the credential (`access.public_with_token`). The GET shows
what the link will do — release, or release and whitelist the sender — for which
message (its subject and sender, nothing more) and which recipient, and changes nothing,
because mail scanners and link previews fetch every link in a message. Only the POST of
that page's form (with its CSRF token) acts, through `digest_release.use_link`.

Tokens we did not sign count against the client address like failed logins (and share
their budget, `webui.login_failures_per_ip` per 15 minutes): they are the only way to
guess. Expired or used links carry a valid signature, so they are refused without
counting. Every POST is in the audit log, refused ones too.
"""

from __future__ import annotations

import logging

from flask import Blueprint, render_template, request
from werkzeug.wrappers import Response

from appliance import digest_release, links
from appliance.blockreports import LINK_PATH
from appliance.storage.types import utcnow
from webui import access
from webui.forms import DigestLinkForm
from webui.state import state
from webui.views.auth import FAILURE_MEMORY, IP_WINDOW

log = logging.getLogger("postwall.webui")

bp = Blueprint("blockreport", __name__)

FAILURE_NAME = "(block report link)"  # the user name of a bad link in login_failures
TOO_MANY = "Too many invalid links from your address. Wait a few minutes and try again."
UNAVAILABLE = ("Block-report links cannot be used at the moment. Try again later, or ask "
               "your mail administrator to release the message.")

Page = tuple[str, int]


def _status(error: Exception) -> int:
    """400 for a link that is not ours, 410 for one that is spent or whose message is
    gone, 503 when Postfix did not take the message (trying again later may work)."""
    if isinstance(error, links.LinkExpired | links.LinkUsed | digest_release.MessageGone):
        return 410
    if isinstance(error, digest_release.DeliveryFailed):
        return 503
    return 400


def _refused(text: str, code: int) -> Page:
    return render_template("blockreport_link.html", error=text), code


@bp.route(LINK_PATH, methods=["GET", "POST"])
@access.public_with_token
def link() -> Page | str | Response:
    ui = state()
    users = ui.storage.users
    ip = access.client_ip()
    limit = ui.loaded.config.webui.login_failures_per_ip
    if users.failed_logins_since(ip, utcnow() - IP_WINDOW) >= limit:
        return _refused(TOO_MANY, 429)
    if request.method == "GET":
        token = request.args.get("token", "")
    else:
        # The CSRF token was checked before this view ran (CSRFProtect); this is the link.
        form = DigestLinkForm()
        if not form.validate_on_submit():
            return _refused("The form did not carry a link. Open the link from your block "
                            "report again.", 400)
        token = form.token.data or ""
    try:
        if request.method == "GET":
            preview = digest_release.preview(ui.storage, token)
        else:
            result = digest_release.use_link(ui.storage, ui.loaded.config, token)
    except (links.LinkKeyError, OSError) as exc:
        log.error("block-report link not answered: %s", exc)  # the installation's fault
        return _refused(UNAVAILABLE, 503)
    except (links.LinkError, digest_release.ReleaseError) as exc:
        if type(exc) is links.LinkError:  # not signed by us: a guess, or a mangled link
            users.note_failed_login(ip, FAILURE_NAME)
            users.purge_failed_logins(utcnow() - FAILURE_MEMORY)
        if request.method == "POST":
            _audit(token, "blockreport.refused", str(exc), ip)
        if isinstance(exc, digest_release.DeliveryFailed):
            # Postfix's answer is for the audit log, not for whoever holds the link.
            text = ("The message could not be delivered just now. The link still works: "
                    "try it again later.")
        else:
            text = f"This link cannot be used: {exc}."
        return _refused(text, _status(exc))
    if request.method == "GET":
        return render_template("blockreport_link.html", preview=preview,
                               form=DigestLinkForm(formdata=None, token=token))
    _audit(token, "", f"{result.describe()}; {result.learned.describe()}", ip)
    return render_template("blockreport_link.html", result=result)


def _audit(token: str, action: str, text: str, ip: str) -> None:
    """One audit row per use of a link: as who (the recipient it was made for), about
    which message, and what happened. `action` empty: the link's own action."""
    ui = state()
    try:
        claims = links.signed_claims(links.load_key(ui.storage.data_dir), token)
    except (links.LinkError, OSError):
        claims = None
    if claims is None:
        ui.storage.audit.record("-", action, "a link not signed by this appliance", None,
                                text, client_ip=ip)
        return
    ui.storage.audit.record(
        f"link:{claims.recipient}", action or f"blockreport.{claims.action}",
        f"{digest_release.QUARANTINE_FOLDER}/{claims.txid} for {claims.recipient}", None,
        text, client_ip=ip)
