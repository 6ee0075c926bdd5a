"""Which command an address names and who may use it (pure)."""

from __future__ import annotations

from enum import StrEnum


class Command(StrEnum):
    HELP = "help"
    SPAM = "spam"
    NOTSPAM = "notspam"
    WHITELIST = "whitelist"
    NOTWHITELIST = "notwhitelist"
    PERSBLACK = "persblack"
    NOTPERSBLACK = "notpersblack"
    REPORTPERSBLACK = "reportpersblack"
    ANALYZE = "analyze"
    BLACKLIST = "blacklist"
    NOTBLACKLIST = "notblacklist"
    REDLIST = "redlist"
    NOTRED = "notred"
    SPAMLOVER = "spamlover"
    NOTSPAMLOVER = "notspamlover"
    NOPROCESSING = "noprocessing"
    NOTNOPROCESSING = "notnoprocessing"
    BLOCKREPORT = "blockreport"


USER_COMMANDS = frozenset({
    Command.HELP, Command.SPAM, Command.NOTSPAM, Command.WHITELIST, Command.NOTWHITELIST,
    Command.PERSBLACK, Command.NOTPERSBLACK, Command.REPORTPERSBLACK, Command.ANALYZE,
})
PRIVILEGED_COMMANDS = frozenset(Command) - USER_COMMANDS

# Global list commands: command -> (list name in storage, add?)
LIST_COMMANDS: dict[Command, tuple[str, bool]] = {
    Command.WHITELIST: ("whitelist", True),
    Command.NOTWHITELIST: ("whitelist", False),
    Command.BLACKLIST: ("blacklist", True),
    Command.NOTBLACKLIST: ("blacklist", False),
    Command.REDLIST: ("redlist", True),
    Command.NOTRED: ("redlist", False),
    Command.SPAMLOVER: ("spamlovers", True),
    Command.NOTSPAMLOVER: ("spamlovers", False),
    Command.NOPROCESSING: ("noprocessing", True),
    Command.NOTNOPROCESSING: ("noprocessing", False),
}

HELP_TEXT: dict[Command, str] = {
    Command.HELP: "this text",
    Command.SPAM: "forward spam that got through (as attachment or inline): it is learned "
                  "as spam",
    Command.NOTSPAM: "forward good mail that was blocked or tagged: it is learned as ham",
    Command.WHITELIST: "addresses in the body (one per line) are never treated as spam",
    Command.NOTWHITELIST: "addresses in the body leave the whitelist",
    Command.PERSBLACK: "you receive no more mail from the addresses in the body; an empty "
                       "body lists your personal blacklist",
    Command.NOTPERSBLACK: "addresses in the body leave your personal blacklist",
    Command.REPORTPERSBLACK: "lists your personal blacklist",
    Command.ANALYZE: "forward a message: you get the explanation of its score",
    Command.BLACKLIST: "addresses in the body are refused for everyone",
    Command.NOTBLACKLIST: "addresses in the body leave the blacklist",
    Command.REDLIST: "mail from the addresses never feeds the whitelist or the corpus",
    Command.NOTRED: "addresses in the body leave the redlist",
    Command.SPAMLOVER: "the recipients in the body get all their mail, spam tagged",
    Command.NOTSPAMLOVER: "addresses in the body leave the spamlover list",
    Command.NOPROCESSING: "mail from or to the addresses in the body is not checked",
    Command.NOTNOPROCESSING: "addresses in the body leave the noprocessing list",
    Command.BLOCKREPORT: "the users in the body (or you) get their block report now",
}


def command_for(address: str, domain: str) -> Command | bool | None:
    """The command `address` names; None for another domain; False for an unknown local
    part at the report domain."""
    local, at, addr_domain = address.strip().strip("<>").rpartition("@")
    if not at or addr_domain.lower().rstrip(".") != domain:
        return None
    try:
        return Command(local.lower())
    except ValueError:
        return False
