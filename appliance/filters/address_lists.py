"""Sender lists at MAIL FROM and recipient lists at RCPT TO.

The lists themselves (configuration plus database entries) are compiled in
`services.lists`; these filters only look addresses up and say what a hit means.
Redlisted mail is marked by the symbol REDLISTED (group "red"): the pipeline and the
autowhitelist/corpus code recognise red mail by it.
"""

from __future__ import annotations

from typing import ClassVar

from appliance.config.schema import AddressListSettings
from appliance.context import TransactionContext
from appliance.filters.base import Filter
from appliance.lists import ListMatch
from appliance.verdict import NO_FINDINGS, Reply, Stage, Symbol, SymbolSpec, Verdict

SENDER_BLACKLISTED = Reply(550, "5.7.1", "Sender blacklisted")

NOPROCESSING = SymbolSpec(
    "NOPROCESSING", -10.0, "Sender or recipient is on the noprocessing list", "lists"
)
RED_GROUP = "red"


class AddressListFilter(Filter):
    """Sender lists, in this order: noprocessing, then whitelist against blacklist (the
    more specific entry wins: an address beats a domain beats a pattern; a tie goes to
    the whitelist, which the admin wrote on purpose), then the autowhitelist, which never
    beats a blacklist. The redlist only marks the mail."""

    name: ClassVar[str] = "address_lists"
    stage: ClassVar[Stage] = Stage.MAIL
    symbols: ClassVar[tuple[SymbolSpec, ...]] = (
        SymbolSpec("WHITELISTED", -10.0, "Sender is on the whitelist", "lists"),
        SymbolSpec("AUTOWHITELISTED", -5.0, "Sender was written to by a local user", "lists"),
        NOPROCESSING,
        SymbolSpec("BLACKLISTED", 10.0, "Sender is on the blacklist", "lists"),
        SymbolSpec(
            "REDLISTED", 0.0, "Sender is redlisted: mail never feeds the autowhitelist "
            "or the corpora", RED_GROUP
        ),
    )

    def setup(self) -> None:
        settings = self.settings
        assert isinstance(settings, AddressListSettings)
        self.use_autowhitelist = settings.use_autowhitelist

    async def check(self, ctx: TransactionContext) -> Verdict:
        sender = ctx.mail_from
        if not sender:  # the null sender <> is on no list
            return NO_FINDINGS
        lists = self.services.lists
        marks: tuple[Symbol, ...] = ()
        red = lists.redlist.match(sender)
        if red is not None:
            marks = (self.hit("REDLISTED", f"{sender} matches {red}"),)

        def final(verdict: Verdict) -> Verdict:
            return Verdict(symbols=marks, final=verdict.final)

        entry = lists.noprocessing.match(sender)
        if entry is not None:
            return final(self.accept("NOPROCESSING", f"sender {sender} matches {entry}"))
        white = lists.whitelist.lookup(sender)
        black = lists.blacklist.lookup(sender)
        if white is not None and _beats(white, black):
            return final(self.accept("WHITELISTED", f"{sender} matches {white.entry}"))
        if black is not None:
            return final(
                self.reject("BLACKLISTED", f"{sender} matches {black.entry}", SENDER_BLACKLISTED)
            )
        if self.use_autowhitelist:
            entry = lists.autowhitelist.match(sender)
            if entry is not None:
                return final(self.accept("AUTOWHITELISTED", f"{sender} matches {entry}"))
        return Verdict(symbols=marks)


def _beats(white: ListMatch, black: ListMatch | None) -> bool:
    return black is None or white.kind >= black.kind


class RecipientListFilter(Filter):
    """Recipient lists at RCPT (settings: `filters.address_lists`): a noprocessing
    recipient exempts the mail; a spamlover is marked with SPAMLOVER so that the scorer
    can turn blocks into tags when every recipient loves spam."""

    name: ClassVar[str] = "recipient_lists"
    section: ClassVar[str] = "address_lists"  # shares the sender lists' settings
    stage: ClassVar[Stage] = Stage.RCPT
    symbols: ClassVar[tuple[SymbolSpec, ...]] = (
        NOPROCESSING,
        SymbolSpec("SPAMLOVER", 0.0, "Recipient wants all mail, spam included", "spamlover"),
    )

    async def check(self, ctx: TransactionContext) -> Verdict:
        if ctx.current_rcpt is None:
            return NO_FINDINGS
        recipient = ctx.current_rcpt.address
        lists = self.services.lists
        entry = lists.noprocessing.match(recipient)
        if entry is not None:
            return self.accept("NOPROCESSING", f"recipient {recipient} matches {entry}")
        entry = lists.spamlovers.match(recipient)
        if entry is not None:
            return self.found(self.hit("SPAMLOVER", f"{recipient} matches {entry}"))
        return NO_FINDINGS
