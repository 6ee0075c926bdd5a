"""Carry out one command and write its answer. Nothing changes unless the whole request
is valid: a malformed address line, a missing forwarded message or a refused value
gives an answer that says so, and leaves lists and ledger as they were."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.message import Message
from typing import TYPE_CHECKING

from appliance.commands.addresses import HELP_TEXT, LIST_COMMANDS, USER_COMMANDS, Command
from appliance.commands.parse import address_lines, forwarded_messages, own_text, sender_of
from appliance.learning_loop import learn_weights, learner_for
from appliance.storage.lists import normalise_value
from appliance.storage.personal import normalise_entry

if TYPE_CHECKING:
    from appliance.config.schema import Config
    from appliance.storage.facade import Storage

MAX_FORWARDED = 20


@dataclass(frozen=True, slots=True)
class Request:
    command: Command
    sender: str  # the local user (envelope sender, lower case)
    message: Message  # the command mail
    privileged: bool


@dataclass(frozen=True, slots=True)
class Answer:
    subject: str
    text: str
    changed: bool = False  # whether lists or the ledger changed


Analyzer = Callable[[bytes], Awaitable[str]]


class Processor:
    def __init__(self, storage: Storage, config: Config, analyzer: Analyzer) -> None:
        self.storage = storage
        self.config = config
        self.analyzer = analyzer

    async def run(self, request: Request) -> Answer:
        command = request.command
        if command is Command.HELP:
            return self._help(request)
        if command in (Command.SPAM, Command.NOTSPAM):
            return await self._learn(request)
        if command is Command.ANALYZE:
            return await self._analyze(request)
        if command in LIST_COMMANDS:
            return await asyncio.to_thread(self._global_list, request)
        if command in (Command.PERSBLACK, Command.NOTPERSBLACK, Command.REPORTPERSBLACK):
            return await asyncio.to_thread(self._personal, request)
        if command is Command.BLOCKREPORT:
            return await asyncio.to_thread(self._blockreport, request)
        raise ValueError(f"unhandled command {command}")

    def _address(self, command: Command) -> str:
        return f"{command.value}@{self.config.commands.domain}"

    # -- help --------------------------------------------------------------------------

    def _help(self, request: Request) -> Answer:
        lines = ["Commands of this mail gateway (send mail to the address; the subject "
                 "does not matter). Each command is answered by mail.", ""]
        for command in Command:
            if command in USER_COMMANDS or request.privileged:
                lines.append(f"  {self._address(command):40} {HELP_TEXT[command]}")
        if not request.privileged:
            lines += ["", "Commands that change the lists of everyone need a privileged "
                      "user (ask your administrator)."]
        lines += ["", "Addresses go in the body, one per line: user@example.org, "
                  "@example.org or *.example.org."]
        return Answer("Postwall: help", "\n".join(lines))

    # -- learning ------------------------------------------------------------------------

    async def _learn(self, request: Request) -> Answer:
        label = "spam" if request.command is Command.SPAM else "ham"
        forwarded = forwarded_messages(request.message)
        if not forwarded:
            return Answer(
                f"Postwall: {request.command.value} - no message found",
                "Your report contained no forwarded message, so nothing was learned.\n"
                "Forward the message as an attachment (preferred: it keeps its headers) "
                "or inline, to " + self._address(request.command) + ".")
        if len(forwarded) > MAX_FORWARDED:
            return Answer(f"Postwall: {request.command.value} - too many messages",
                          f"Your report carried {len(forwarded)} messages; send at most "
                          f"{MAX_FORWARDED} per report. Nothing was learned.")
        weight = learn_weights(self.config)[label]
        learner = learner_for(self.storage, self.config)
        from appliance.classifier.learner import LearnJob

        jobs = [LearnJob(content, label, "report", request.sender, weight)
                for content in forwarded]
        results = await asyncio.to_thread(learner.learn_many, jobs)
        lines = [f"{index}. {result.describe()}" for index, result in enumerate(results, 1)]
        changed = any(result.changed for result in results)
        what = "spam" if label == "spam" else "not spam"
        return Answer(f"Postwall: {len(results)} message(s) reported as {what}",
                      f"Thank you. Each message counts {weight} times.\n\n" + "\n".join(lines),
                      changed)

    async def _analyze(self, request: Request) -> Answer:
        forwarded = forwarded_messages(request.message)
        if not forwarded:
            return Answer("Postwall: analyze - no message found",
                          "Forward the message to analyze as an attachment or inline.")
        parts = []
        for index, content in enumerate(forwarded[:MAX_FORWARDED], 1):
            parts.append(f"=== message {index} ===\n{await self.analyzer(content)}")
        return Answer(f"Postwall: analysis of {len(parts)} message(s)", "\n\n".join(parts))

    # -- lists ---------------------------------------------------------------------------

    def _values(self, request: Request, validate: Callable[[str], str],
                fallback_to_senders: bool) -> tuple[list[str], list[str]]:
        """(normalised values, error lines); any error means nothing may change."""
        parsed = address_lines(own_text(request.message), self.config.commands.max_addresses)
        errors = [f"line {n}: '{text}': {why}" for n, text, why in parsed.malformed]
        values: list[str] = []
        for raw in parsed.values:
            if raw.startswith("/"):
                errors.append(f"'{raw}': regular expressions can only be set by the "
                              "administrator")
                continue
            try:
                values.append(validate(raw))
            except ValueError as exc:
                errors.append(f"'{raw}': {exc}")
        if not values and not errors and fallback_to_senders:
            values = [s for s in (sender_of(m) for m in forwarded_messages(request.message)) if s]
        return list(dict.fromkeys(values)), errors

    @staticmethod
    def _refused(command: Command, errors: list[str]) -> Answer:
        return Answer(f"Postwall: {command.value} - nothing changed",
                      "Your request was not carried out; nothing was changed:\n\n"
                      + "\n".join(f"  {e}" for e in errors)
                      + "\n\nPut one address per line: user@example.org, @example.org or "
                      "*.example.org.")

    def _global_list(self, request: Request) -> Answer:
        list_name, add = LIST_COMMANDS[request.command]
        values, errors = self._values(
            request, lambda v: normalise_value(list_name, v),
            fallback_to_senders=request.command is Command.WHITELIST)
        if errors:
            return self._refused(request.command, errors)
        if not values:
            return self._refused(request.command, ["no address in the body"])
        lists = self.storage.lists
        if add:
            lists.add_many(list_name, values, source="mail", added_by=request.sender,
                           comment=f"by mail from {request.sender}")
            lines = [f"  added {v}" for v in values]
        else:
            lines = [f"  {'removed' if lists.remove(list_name, v) else 'was not listed:'} {v}"
                     for v in values]
        return Answer(f"Postwall: {list_name} changed",
                      f"The {list_name} was changed as you asked:\n\n" + "\n".join(lines), True)

    def _personal(self, request: Request) -> Answer:
        store = self.storage.personal
        owner = request.sender
        if request.command is Command.REPORTPERSBLACK:
            return self._personal_report(owner)
        values, errors = self._values(request, normalise_entry, fallback_to_senders=False)
        if errors:
            return self._refused(request.command, errors)
        if not values:
            if request.command is Command.PERSBLACK:
                return self._personal_report(owner)
            return self._refused(request.command, ["no address in the body"])
        if request.command is Command.PERSBLACK:
            try:
                added = store.add(owner, values, added_by=owner)
            except ValueError as exc:
                return self._refused(request.command, [str(exc)])
            lines = [f"  added {v}" for v in added]
        else:
            removed = store.remove(owner, values)
            lines = [f"  {'removed' if v in removed else 'was not listed:'} {v}" for v in values]
        text = "Your personal blacklist was changed:\n\n" + "\n".join(lines)
        return Answer("Postwall: personal blacklist changed", text + "\n\n"
                      + self._personal_report(owner).text, True)

    def _personal_report(self, owner: str) -> Answer:
        entries = self.storage.personal.entries(owner)
        if not entries:
            text = "Your personal blacklist is empty."
        else:
            text = (f"Your personal blacklist ({len(entries)} entries): mail from these "
                    "senders is refused for you.\n\n" + "\n".join(f"  {e}" for e in entries))
        return Answer("Postwall: your personal blacklist", text)

    # -- block reports -------------------------------------------------------------------

    def _blockreport(self, request: Request) -> Answer:
        from appliance import blockreports

        parsed = address_lines(own_text(request.message), self.config.commands.max_addresses)
        errors = [f"line {n}: '{text}': {why}" for n, text, why in parsed.malformed]
        users = []
        for value in parsed.values:
            if "@" not in value.strip("@") or "*" in value:
                errors.append(f"'{value}': a block report goes to one mail address")
            else:
                users.append(value.lower())
        if errors:
            return self._refused(request.command, errors)
        from appliance.outbound import DeliveryError

        lines = []
        for user in dict.fromkeys(users or [request.sender]):
            try:
                count = blockreports.send_digest(self.storage, self.config, user)
            except DeliveryError as exc:
                lines.append(f"  {user}: not sent ({exc})")
            else:
                lines.append(f"  {user}: {count} blocked message(s) listed")
        return Answer("Postwall: block reports sent", "Block reports were sent:\n\n"
                      + "\n".join(lines))
