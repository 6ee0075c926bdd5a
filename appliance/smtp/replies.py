"""Named SMTP replies, so tests and code speak of OK and RELAY_DENIED, not of strings."""

from __future__ import annotations

from appliance.verdict import Reply

OK = Reply(250, "2.0.0", "OK")
SENDER_OK = Reply(250, "2.1.0", "Sender OK")
RELAY_DENIED = Reply(550, "5.7.1", "Relaying denied")
RELAY_CLIENT_DENIED = Reply(554, "5.7.1", "Relay access denied for your address")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
LINE_TOO_LONG = Reply(500, "5.5.2", "Line too long")
BARE_LINE_END = Reply(550, "5.5.2", "Bare CR or LF line ends are not allowed (RFC 5321 2.3.8)")
EIGHT_BIT_UNDECLARED = Reply(
    550, "5.6.1", "8-bit data without BODY=8BITMIME (RFC 6152); resend declaring it"
)
NUL_IN_DATA = Reply(550, "5.6.0", "NUL characters are not allowed in message data")
DATA_TIMEOUT = Reply(421, "4.4.2", "Timeout receiving data, closing connection")
DOWNSTREAM_UNAVAILABLE = Reply(451, "4.4.1", "Mail system temporarily unavailable, try later")
DOWNSTREAM_FAILED = Reply(451, "4.4.2", "Delivery to the mail system failed, try later")
LOCAL_ERROR = Reply(451, "4.3.0", "Local error in processing, try later")
DKIM_KEY_UNAVAILABLE = Reply(451, "4.3.0", "DKIM signing key unavailable, try later")
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Too many connections, try later")
TOO_MANY_FROM_IP = Reply(421, "4.7.0", "Too many connections from your address, try later")
TOO_MANY_COMMANDS = Reply(421, "4.7.0", "Too many commands, closing connection")
TOO_MANY_ERRORS = Reply(421, "4.7.0", "Too many errors, closing connection")
TOO_MANY_MESSAGES = Reply(421, "4.7.0", "Too many messages in one session, closing connection")
SESSION_TIMEOUT = Reply(421, "4.4.2", "Session too long, closing connection")
SHUTTING_DOWN = Reply(421, "4.3.2", "Service shutting down, try later")
SOURCE_ROUTE = Reply(550, "5.7.1", "Source routes are not accepted")
BAD_RECIPIENT_SYNTAX = Reply(553, "5.1.3", "Invalid recipient address")
BAD_SENDER_SYNTAX = Reply(553, "5.1.7", "Invalid sender address")
NEEDS_SMTPUTF8 = Reply(553, "5.6.7", "Non-ASCII address without SMTPUTF8 (RFC 6531)")
DISCARDED = Reply(250, "2.0.0", "OK")
# Maintenance (upgrade, restore): senders retry later; nothing is accepted meanwhile.
MAINTENANCE_DATA = Reply(451, "4.3.2", "Service temporarily unavailable, try again later")


def maintenance_closing(hostname: str) -> Reply:
    return Reply(421, "4.3.2", f"{hostname} Service temporarily unavailable, try again later")


def health_check_passed(action: str, score: float) -> Reply:
    """The answer to the health gate's probe message, which is judged but not delivered."""
    return Reply(250, "2.0.0", f"Health check passed (action={action} score={score:g}), "
                 "not delivered")
