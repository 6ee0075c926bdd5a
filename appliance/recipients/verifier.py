"""Which method verifies a recipient's domain, and the lookups with cache and in-flight
deduplication.

A `VerifyPlan` is built from the settings when the filter is built (it reads the LDAP
password file and the static list files, so a mistake fails `check-config`, the start
or the reload, never a message). The `RecipientVerifier` is one per worker and outlives
reloads: it owns the cache and the connections, keyed by target, so a reload that
changes nothing keeps both."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Hashable
from dataclasses import dataclass, field

from appliance.config.schema import RecipientDomainSettings, RecipientVerifySettings
from appliance.lists import ListIndex
from appliance.recipients.cache import LookupCache
from appliance.recipients.callout import CalloutClient, CalloutTarget
from appliance.recipients.harvest import HarvestCounter
from appliance.recipients.ldap import LDAPClient, LDAPTarget, read_password_file
from appliance.recipients.result import Existence, Lookup, VerifierUnavailable
from appliance.recipients.static import RecipientFile

log = logging.getLogger("postwall.recipients")

UNUSED_CLIENT_SECONDS = 600.0  # connections to a target no plan used for this long go


@dataclass(frozen=True, slots=True)
class DomainPlan:
    """How one domain (or the default) is verified."""

    label: str  # "example.com", "*.example.com" or "default", for log lines
    method: str
    on_unavailable: str
    key: str  # identifies the settings, so the cache never mixes two configurations
    list_file: RecipientFile | None = None
    callout: CalloutTarget | None = None
    ldap: LDAPTarget | None = None

    @property
    def target(self) -> str:
        if self.callout is not None:
            return f"callout {self.callout.name}"
        if self.ldap is not None:
            return f"ldap {self.ldap.name}"
        return self.method


@dataclass(frozen=True, slots=True)
class VerifyPlan:
    default: DomainPlan
    exact: dict[str, DomainPlan] = field(default_factory=dict)
    suffixes: tuple[tuple[str, DomainPlan], ...] = ()  # (".example.com", plan), longest first
    always_accept: frozenset[str] = frozenset({"postmaster"})

    def for_domain(self, domain: str) -> DomainPlan:
        name = domain.lower().rstrip(".")
        plan = self.exact.get(name)
        if plan is not None:
            return plan
        for suffix, plan in self.suffixes:
            if name.endswith(suffix):
                return plan
        return self.default

    @property
    def verifies_anything(self) -> bool:
        plans = (self.default, *self.exact.values(), *(p for _, p in self.suffixes))
        return any(p.method != "none" for p in plans)


def _domain_plan(label: str, settings: RecipientDomainSettings, helo: str) -> DomainPlan:
    key = hashlib.sha256(
        json.dumps(settings.model_dump(mode="json"), sort_keys=True).encode()
    ).hexdigest()[:16]
    list_file = callout = ldap = None
    if settings.method == "static" and settings.list_file is not None:
        list_file = RecipientFile(settings.list_file)
    if settings.method == "callout":
        c = settings.callout
        assert c is not None  # the schema requires it
        callout = CalloutTarget(
            host=c.host, port=c.port, command=c.command, timeout=c.timeout,
            helo=c.helo or helo, max_idle=c.max_idle_connections, idle_seconds=c.idle_seconds,
        )
    if settings.method == "ldap":
        lds = settings.ldap
        assert lds is not None
        password = None
        if lds.bind_password_file is not None:
            password = read_password_file(lds.bind_password_file)
        ldap = LDAPTarget(
            servers=tuple(lds.servers), bind_dn=lds.bind_dn, password=password,
            base_dn=lds.base_dn, template=lds.filter,
            ca_file=str(lds.ca_file) if lds.ca_file else None,
            timeout=lds.timeout, pool_size=lds.pool_size,
        )
    return DomainPlan(label, settings.method, settings.on_unavailable, key, list_file,
                      callout, ldap)


def build_plan(settings: RecipientVerifySettings, helo: str) -> VerifyPlan:
    """Raises ValueError naming the domain when a setting cannot be used."""

    def plan(label: str, domain_settings: RecipientDomainSettings) -> DomainPlan:
        try:
            return _domain_plan(label, domain_settings, helo)
        except ValueError as exc:
            raise ValueError(f"filters.recipient_verify ({label}): {exc}") from None

    exact: dict[str, DomainPlan] = {}
    suffixes: list[tuple[str, DomainPlan]] = []
    for name, domain_settings in settings.domains.items():
        if name.startswith("*."):
            suffixes.append((name[1:], plan(name, domain_settings)))
        else:
            exact[name] = plan(name, domain_settings)
    suffixes.sort(key=lambda item: len(item[0]), reverse=True)
    return VerifyPlan(
        default=plan("default", settings.default), exact=exact, suffixes=tuple(suffixes),
        always_accept=frozenset({"postmaster", *settings.always_accept}),
    )


def static_lookup(plan: DomainPlan, address: str, valid: ListIndex) -> Lookup:
    entry = valid.match(address)
    if entry is not None:
        return Lookup(Existence.EXISTS, f"valid_recipients entry {entry}")
    if plan.list_file is not None:
        entry = plan.list_file.current().match(address)
        if entry is not None:
            return Lookup(Existence.EXISTS, f"{plan.list_file.path}: {entry}")
    where = "valid_recipients" + (f" or {plan.list_file.path}" if plan.list_file else "")
    return Lookup(Existence.UNKNOWN, f"not in {where}")


class RecipientVerifier:
    """One per worker: the cache, the callout and LDAP connections, the harvest counts."""

    def __init__(self, settings: RecipientVerifySettings | None = None) -> None:
        cache = (settings or RecipientVerifySettings()).cache
        self.cache = LookupCache(positive_ttl=cache.positive_ttl,
                                 negative_ttl=cache.negative_ttl, max_entries=cache.max_entries)
        self.harvest = HarvestCounter()
        self._callouts: dict[CalloutTarget, CalloutClient] = {}
        self._ldaps: dict[LDAPTarget, LDAPClient] = {}
        self._inflight: dict[Hashable, asyncio.Task[Lookup]] = {}
        self._swept = time.monotonic()

    def configure(self, settings: RecipientVerifySettings) -> None:
        cache = settings.cache
        self.cache.configure(positive_ttl=cache.positive_ttl, negative_ttl=cache.negative_ttl,
                             max_entries=cache.max_entries)

    async def verify(self, plan: DomainPlan, address: str, valid: ListIndex) -> Lookup:
        """EXISTS, UNKNOWN or UNAVAILABLE (with the reason in `detail`); never raises for
        a verifier that is down."""
        if plan.method == "static":
            return static_lookup(plan, address, valid)
        key = (plan.key, address.lower())
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        task = self._inflight.get(key)
        if task is None:
            # A task of its own: a second recipient asking the same waits for the first
            # answer, and a caller that times out does not cancel it for the others.
            task = asyncio.ensure_future(self._ask(plan, address, key))
            self._inflight[key] = task
            task.add_done_callback(lambda _t, k=key: self._inflight.pop(k, None))
        return await asyncio.shield(task)

    async def _ask(self, plan: DomainPlan, address: str, key: Hashable) -> Lookup:
        self._sweep()
        try:
            if plan.callout is not None:
                lookup = await self._callout(plan.callout).probe(address)
            elif plan.ldap is not None:
                lookup = await self._ldap(plan.ldap).lookup(address)
            else:
                raise VerifierUnavailable(f"method {plan.method} has nothing to ask")
        except VerifierUnavailable as exc:
            return Lookup(Existence.UNAVAILABLE, str(exc))
        self.cache.put(key, lookup)
        return lookup

    def _callout(self, target: CalloutTarget) -> CalloutClient:
        client = self._callouts.get(target)
        if client is None:
            client = self._callouts[target] = CalloutClient(target)
        return client

    def _ldap(self, target: LDAPTarget) -> LDAPClient:
        client = self._ldaps.get(target)
        if client is None:
            client = self._ldaps[target] = LDAPClient(target)
        return client

    def _sweep(self) -> None:
        """Close connections to targets no configuration has used for a while (the
        settings changed at a reload)."""
        now = time.monotonic()
        if now - self._swept < UNUSED_CLIENT_SECONDS:
            return
        self._swept = now
        for target, client in list(self._ldaps.items()):
            if now - client.last_used > UNUSED_CLIENT_SECONDS:
                del self._ldaps[target]
                client.close()
        for target, callout in list(self._callouts.items()):
            if now - callout.last_used > UNUSED_CLIENT_SECONDS:
                del self._callouts[target]
                callout.close_now()

    @property
    def connects(self) -> int:
        """Connections opened so far (callout and LDAP), for tests and metrics."""
        return (sum(c.connects for c in self._callouts.values())
                + sum(c.connects for c in self._ldaps.values()))

    async def close(self) -> None:
        for callout in self._callouts.values():
            await callout.close()
        for client in self._ldaps.values():
            await asyncio.to_thread(client.close)
        self._callouts.clear()
        self._ldaps.clear()
