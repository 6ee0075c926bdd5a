"""The command interface as the SMTP handler sees it.

At RCPT: an address at the report domain is a command. It is accepted only on the relay
listener, from a sender in local_domains, for a command that sender may use; it never
reaches Postfix. A transaction holds either commands or ordinary recipients: mixing them
gets 452 for the late ones, so the client sends them in a transaction of their own.

At DATA: the mail is consumed (never relayed): each command is carried out and answered
by a mail sent through Postfix to the sender (and the helpdesk, if configured). The
client hears 250 only once the answers were accepted by Postfix; 451 otherwise, and the
retry is harmless (learning and list changes are idempotent).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from appliance import outbound
from appliance.commands.addresses import PRIVILEGED_COMMANDS, Command, command_for
from appliance.commands.processor import Answer, Processor, Request
from appliance.lists import ListIndex
from appliance.verdict import Reply

if TYPE_CHECKING:
    from appliance.context import TransactionContext
    from appliance.runtime import Runtime

log = logging.getLogger("postwall.commands")

ACCEPTED = Reply(250, "2.1.5", "Command address accepted")
NOT_HERE = Reply(550, "5.7.1", "Commands are accepted from local users on the relay port only")
NOT_LOCAL = Reply(550, "5.7.1", "Commands are accepted from local users only")
UNKNOWN = Reply(550, "5.1.1", "No such command; mail help@ the report domain for the list")
PRIVILEGED = Reply(550, "5.7.1", "This command is for privileged users only")
DISABLED = Reply(550, "5.7.1", "The mail command interface is switched off")
MIXED = Reply(452, "4.5.3", "Commands and other recipients need separate messages; "
              "send the rest again")
TOO_BIG = Reply(552, "5.3.4", "Command mail too big")
ANSWER_FAILED = Reply(451, "4.3.0", "Command done but its answer could not be sent; try again")
AUTOMATIC = Reply(250, "2.0.0", "Automatic message to a command address ignored")


class CommandInterface:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._privileged_source: tuple[str, ...] = ()
        self._privileged = ListIndex(())

    def _is_privileged(self, sender: str) -> bool:
        entries = tuple(self.runtime.config.commands.privileged)
        if entries != self._privileged_source:
            self._privileged = ListIndex(entries, "commands.privileged")
            self._privileged_source = entries
        return self._privileged.match(sender) is not None

    def command(self, address: str) -> Command | bool | None:
        """The command an address names (None: not the report domain)."""
        return command_for(address, self.runtime.config.commands.domain)

    def rcpt(self, tx: TransactionContext, address: str) -> Reply | None:
        """The reply for RCPT TO:<address>; None when it is no command address and the
        transaction holds no commands (the caller goes on as usual)."""
        found = self.command(address)
        if found is None:
            return MIXED if tx.command_rcpts else None
        settings = self.runtime.config.commands
        if not settings.enabled:
            return DISABLED
        if not tx.connection.is_relay:
            return NOT_HERE
        if not tx.mail_from or not self.runtime.is_local_domain(tx.sender_domain):
            return NOT_LOCAL
        if found is False:
            return UNKNOWN
        assert isinstance(found, Command)
        if found in PRIVILEGED_COMMANDS and not self._is_privileged(tx.mail_from):
            return PRIVILEGED
        if tx.rcpt_tos:
            return MIXED
        if _declared_size(tx.mail_options) > settings.max_message_size:
            return TOO_BIG
        tx.command_rcpts.append(address)
        return ACCEPTED

    async def data(self, tx: TransactionContext) -> Reply:
        """Carry out the commands of a consumed mail and send the answers."""
        runtime = self.runtime
        config = runtime.config
        if tx.size > config.commands.max_message_size:
            return Reply(552, "5.3.4", f"Command mail larger than "
                         f"{config.commands.max_message_size} bytes; nothing was done")
        if runtime.storage is None:
            return Reply(451, "4.3.0", "Commands need the appliance database; try again")
        if tx.size > 256 * 1024:  # parsing a big mail would stall this worker's sessions
            await asyncio.to_thread(getattr, tx, "message")
        message = tx.message
        auto = str(message.get("Auto-Submitted", "no")).strip().lower()
        if auto and not auto.startswith("no"):
            log.info("tx=%s automatic mail to %s ignored", tx.id, ",".join(tx.command_rcpts))
            return AUTOMATIC
        sender = tx.mail_from.lower()
        processor = Processor(runtime.storage, config, self._analyze)
        answers: list[tuple[Command, Answer]] = []
        for address in dict.fromkeys(a.lower() for a in tx.command_rcpts):
            command = self.command(address)
            assert isinstance(command, Command)
            request = Request(command, sender, message, self._is_privileged(sender))
            answer = await processor.run(request)
            log.info("tx=%s command %s from <%s>: %s", tx.id, command.value, sender,
                     answer.subject)
            answers.append((command, answer))
        recipients = [sender] + ([config.commands.helpdesk] if config.commands.helpdesk else [])
        message_id = str(message.get("Message-ID", "")).strip() or None
        try:
            for command, answer in answers:
                content = outbound.compose(
                    config, to=tx.mail_from, subject=answer.subject, text=answer.text,
                    sender=f"{command.value}@{config.commands.domain}", in_reply_to=message_id)
                await asyncio.to_thread(outbound.send, config, "", recipients, content)
        except outbound.DeliveryError as exc:
            log.warning("tx=%s command answer not sent: %s", tx.id, exc)
            return ANSWER_FAILED
        done = ", ".join(c.value for c, _ in answers)
        return Reply(250, "2.0.0", f"Command {done} done; answer sent to <{tx.mail_from}>")

    async def _analyze(self, content: bytes) -> str:
        from appliance.analysis import analyze

        report = await analyze(self.runtime, content)
        return report.render()


def _declared_size(options: tuple[str, ...]) -> int:
    for option in options:
        name, _, value = option.partition("=")
        if name.upper() == "SIZE" and value.isdigit():
            return int(value)
    return 0
