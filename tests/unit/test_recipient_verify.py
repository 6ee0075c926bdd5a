"""Recipient verification logic: settings, per-domain selection, the cache, the LDAP
filter template and its escaping, the password file, static lists, harvest counting and
the filter's decisions (the static method needs no network)."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from appliance.config.schema import (
    Config,
    RecipientDomainSettings,
    RecipientVerifySettings,
    check_ldap_filter_template,
)
from appliance.context import ConnectionContext, Listener, RecipientContext, TransactionContext
from appliance.filters.recipients import RecipientVerifyFilter
from appliance.filters.registry import FILTER_CLASSES, declared_symbols, settings_for
from appliance.pipeline import Pipeline
from appliance.recipients import static
from appliance.recipients.cache import LookupCache
from appliance.recipients.harvest import HarvestCounter
from appliance.recipients.ldap import fill_filter, read_password_file
from appliance.recipients.result import Existence, Lookup
from appliance.recipients.static import RecipientFile
from appliance.recipients.verifier import build_plan
from appliance.services import Services
from appliance.verdict import Decision, Stage


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- settings ------------------------------------------------------------------------


def test_callout_and_ldap_need_their_sections() -> None:
    with pytest.raises(ValidationError, match="method callout needs a callout section"):
        RecipientDomainSettings(method="callout")
    with pytest.raises(ValidationError, match="method ldap needs an ldap section"):
        RecipientDomainSettings(method="ldap")
    with pytest.raises(ValidationError, match="Field required"):
        RecipientDomainSettings(method="callout", callout={"port": 25})


def test_ldap_settings_are_checked() -> None:
    base = {"servers": ["ldap://dc1.corp.test"], "base_dn": "dc=corp,dc=test"}
    with pytest.raises(ValidationError, match="ldap://host"):
        RecipientDomainSettings(method="ldap", ldap={**base, "servers": ["http://dc1"]})
    with pytest.raises(ValidationError, match="set together"):
        RecipientDomainSettings(method="ldap", ldap={**base, "bind_dn": "cn=x"})
    with pytest.raises(ValidationError, match="unknown placeholder"):
        RecipientDomainSettings(method="ldap", ldap={**base, "filter": "(mail={user})"})
    ok = RecipientDomainSettings(method="ldap", ldap=base)
    assert ok.ldap is not None and "{address}" in ok.ldap.filter


@pytest.mark.parametrize(("template", "error"), [
    ("(mail={address})", None),
    ("(&(objectClass=user)(|(mail={address})(sAMAccountName={local})))", None),
    ("mail={address}", "unbalanced"),
    ("(mail={address}", "unbalanced"),
    ("(mail={address}))(", "unbalanced"),
    ("(mail=fixed@example.com)", "names no"),
    ("(mail={address!r})", "unknown placeholder"),
    ("(mail={0})", "unknown placeholder"),
    ("(mail={address)", "LDAP filter template"),
])
def test_filter_templates(template: str, error: str | None) -> None:
    if error is None:
        assert check_ldap_filter_template(template) == template
    else:
        with pytest.raises(ValueError, match=error):
            check_ldap_filter_template(template)


def test_domain_keys_and_local_parts_are_normalised() -> None:
    settings = RecipientVerifySettings(
        domains={"Example.COM.": {"method": "static"}}, always_accept=["Abuse"]
    )
    assert list(settings.domains) == ["example.com"]
    assert settings.always_accept == ["abuse"]
    with pytest.raises(ValidationError, match="invalid domain"):
        RecipientVerifySettings(domains={"bad domain": {"method": "static"}})
    with pytest.raises(ValidationError, match="local parts"):
        RecipientVerifySettings(always_accept=["postmaster@example.com"])


# -- the LDAP filter: escaping ---------------------------------------------------------


def test_the_address_is_escaped_into_the_filter() -> None:
    template = "(|(mail={address})(proxyAddresses=smtp:{address})(uid={local}))"
    assert fill_filter(template, "bob@example.com") == (
        "(|(mail=bob@example.com)(proxyAddresses=smtp:bob@example.com)(uid=bob))"
    )
    injected = fill_filter("(mail={address})", "*)(uid=*@example.com")
    assert injected == r"(mail=\2a\29\28uid=\2a@example.com)"
    assert fill_filter("(uid={local})", "a\\b@x.test") == r"(uid=a\5cb)"
    assert fill_filter("(dc={domain})", "a@x*.test") == r"(dc=x\2a.test)"


# -- the password file ---------------------------------------------------------------------


def test_the_password_file_must_be_owner_only(tmp_path: Path) -> None:
    secret = tmp_path / "bind.secret"
    secret.write_text("s3cret-password\nignored second line\n")
    secret.chmod(0o644)
    with pytest.raises(ValueError, match=r"readable by others \(mode 0644\): chmod 600"):
        read_password_file(secret)
    secret.chmod(0o600)
    assert read_password_file(secret) == "s3cret-password"
    secret.chmod(0o400)
    assert read_password_file(secret) == "s3cret-password"
    empty = tmp_path / "empty.secret"
    empty.write_text("")
    empty.chmod(0o600)
    with pytest.raises(ValueError, match="is empty"):
        read_password_file(empty)
    with pytest.raises(ValueError, match="No such file"):
        read_password_file(tmp_path / "missing.secret")


def test_a_readable_password_file_fails_the_plan_naming_the_domain(tmp_path: Path) -> None:
    secret = tmp_path / "bind.secret"
    secret.write_text("pw\n")
    secret.chmod(0o640)
    settings = RecipientVerifySettings(domains={"corp.test": {"method": "ldap", "ldap": {
        "servers": ["ldap://127.0.0.1:1"], "base_dn": "dc=corp,dc=test",
        "bind_dn": "cn=postwall,dc=corp,dc=test", "bind_password_file": str(secret),
    }}})
    with pytest.raises(ValueError, match=r"recipient_verify \(corp.test\).*readable by others"):
        build_plan(settings, "mx.test")
    secret.chmod(0o600)
    target = build_plan(settings, "mx.test").for_domain("corp.test").ldap
    assert target is not None and target.password == "pw"
    assert "pw" not in repr(target)  # a log line showing the target never shows the password


# -- per-domain selection -------------------------------------------------------------------


def test_the_most_specific_domain_setting_wins() -> None:
    callout = {"host": "10.0.0.5"}
    settings = RecipientVerifySettings(
        default={"method": "static"},
        domains={
            "example.com": {"method": "callout", "callout": callout},
            "*.example.com": {"method": "none"},
            "*.eu.example.com": {"method": "callout", "callout": {**callout, "port": 2525},
                                 "on_unavailable": "accept"},
        },
    )
    plan = build_plan(settings, "mx.test")
    assert plan.for_domain("Example.COM").method == "callout"
    assert plan.for_domain("sales.example.com").method == "none"
    eu = plan.for_domain("paris.eu.example.com")
    assert eu.label == "*.eu.example.com" and eu.on_unavailable == "accept"
    assert eu.callout is not None and eu.callout.port == 2525 and eu.callout.helo == "mx.test"
    assert plan.for_domain("other.test").label == "default"
    assert plan.for_domain("other.test").method == "static"
    assert plan.always_accept == {"postmaster", "abuse"}
    # The cache key differs whenever the settings differ.
    assert plan.for_domain("example.com").key != eu.key


def test_postmaster_is_always_accepted_even_when_not_listed() -> None:
    plan = build_plan(RecipientVerifySettings(always_accept=[]), "mx.test")
    assert plan.always_accept == {"postmaster"}


# -- the cache --------------------------------------------------------------------------------


def test_positive_and_negative_answers_expire_after_their_own_ttl() -> None:
    clock = Clock()
    cache = LookupCache(positive_ttl=100, negative_ttl=10, max_entries=10, clock=clock)
    cache.put("known", Lookup(Existence.EXISTS, "250"))
    cache.put("unknown", Lookup(Existence.UNKNOWN, "550"))
    cache.put("down", Lookup(Existence.UNAVAILABLE, "timeout"))
    hit = cache.get("known")
    assert hit is not None and hit.cached and hit.detail == "250"
    assert cache.get("unknown") is not None
    assert cache.get("down") is None  # failures are never cached
    clock.now += 11
    assert cache.get("unknown") is None
    assert cache.get("known") is not None
    clock.now += 90
    assert cache.get("known") is None
    assert len(cache) == 0


def test_the_least_recently_used_answer_goes_first() -> None:
    cache = LookupCache(positive_ttl=100, negative_ttl=100, max_entries=2, clock=Clock())
    cache.put("a", Lookup(Existence.EXISTS, ""))
    cache.put("b", Lookup(Existence.EXISTS, ""))
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("c", Lookup(Existence.EXISTS, ""))
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    cache.configure(positive_ttl=100, negative_ttl=100, max_entries=0)
    cache.put("d", Lookup(Existence.EXISTS, ""))
    assert len(cache) == 0


# -- static lists ------------------------------------------------------------------------------


def test_a_list_file_is_read_again_when_it_changes(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "recipients.txt"
    path.write_text("# staff\nalice@corp.test\n*@dept.corp.test\n")
    clock = Clock()
    listed = RecipientFile(path, clock=clock)
    assert listed.current().match("alice@corp.test") == "alice@corp.test"
    assert listed.current().match("anyone@dept.corp.test") == "*@dept.corp.test"
    assert listed.current().match("bob@corp.test") is None
    path.write_text("bob@corp.test\n")
    os.utime(path, ns=(1, 1))  # a distinct mtime, whatever the clock's resolution
    assert listed.current().match("bob@corp.test") is None  # not stat'ed again yet
    clock.now += static.STAT_EVERY
    assert listed.current().match("bob@corp.test") == "bob@corp.test"
    assert listed.current().match("alice@corp.test") is None
    path.unlink()
    clock.now += static.STAT_EVERY
    assert listed.current().match("bob@corp.test") == "bob@corp.test"  # last good kept


def test_a_missing_list_file_fails_the_plan(tmp_path: Path) -> None:
    settings = RecipientVerifySettings(
        default={"method": "static", "list_file": str(tmp_path / "nope.txt")}
    )
    with pytest.raises(ValueError, match=r"\(default\).*nope.txt: No such file"):
        build_plan(settings, "mx.test")


# -- harvest counting ----------------------------------------------------------------------------


def test_the_per_client_count_covers_a_sliding_window() -> None:
    clock = Clock()
    counter = HarvestCounter(clock=clock)
    assert [counter.add("192.0.2.1", 60, 10) for _ in range(3)] == [1, 2, 3]
    assert counter.add("192.0.2.2", 60, 10) == 1
    clock.now += 61
    assert counter.count("192.0.2.1", 60) == 0
    assert counter.add("192.0.2.1", 60, 10) == 1


# -- the filter -------------------------------------------------------------------------------


# The domains these tests verify: only local domains are (an SRS bounce goes outside).
LOCAL_DOMAINS = ["corp.test", "*.corp.test", "catchall.test", "free.test", "lenient.test",
                 "x.test", "example.com"]


def make_filter(settings: dict, db: dict[str, list[str]] | None = None,
                **config: object) -> RecipientVerifyFilter:
    config.setdefault("local_domains", LOCAL_DOMAINS)
    cfg = Config.model_validate({"filters": {"recipient_verify": settings}, **config})
    services = Services.from_config(cfg, db)
    return RecipientVerifyFilter(
        settings_for(RecipientVerifyFilter, cfg), cfg.scoring.weights, cfg, services
    )


def rcpt_tx(address: str, conn: ConnectionContext | None = None,
            sender: str = "x@sender.test") -> TransactionContext:
    conn = conn or ConnectionContext(ipaddress.ip_address("192.0.2.9"), 4000, Listener.INBOUND)
    ctx = TransactionContext(connection=conn, mail_from=sender)
    ctx.current_rcpt = RecipientContext(address)
    return ctx


STATIC = {
    "default": {"method": "static"},
    "valid_recipients": ["alice@corp.test", "*@dept.corp.test", "@catchall.test"],
}


def test_it_runs_at_rcpt_before_the_recipient_lists_and_greylisting() -> None:
    names = [cls.name for cls in FILTER_CLASSES]
    assert names.index("recipient_verify") < names.index("recipient_lists")
    assert names.index("recipient_verify") < names.index("greylist")
    assert RecipientVerifyFilter.stage is Stage.RCPT
    assert {"RCPT_UNKNOWN", "RCPT_HARVEST", "RCPT_VERIFY_UNAVAILABLE"} <= set(declared_symbols())


async def test_static_known_wildcard_catch_all_and_database_entries_pass() -> None:
    flt = make_filter(STATIC, {"valid_recipients": ["carol@corp.test"]})
    for address in ("alice@corp.test", "ALICE@Corp.Test", "x@dept.corp.test",
                    "anything@catchall.test", "carol@corp.test"):
        verdict = await flt.check(rcpt_tx(address))
        assert verdict.final is None and not verdict.symbols, address


async def test_an_unknown_recipient_gets_550_511_forced() -> None:
    flt = make_filter(STATIC)
    verdict = await flt.check(rcpt_tx("mallory@corp.test"))
    final = verdict.final
    assert final is not None and final.decision is Decision.REJECT and final.force
    assert str(final.reply) == (
        "550 5.1.1 <mallory@corp.test>: Recipient address rejected: User unknown"
    )
    assert final.symbol.name == "RCPT_UNKNOWN" and "not in valid_recipients" in final.symbol.reason


async def test_addresses_outside_the_local_domains_are_not_verified() -> None:
    # An SRS bounce, reversed, is relayed to its outside sender: nothing to verify.
    flt = make_filter(STATIC)
    ctx = rcpt_tx("SRS0=abcd=XY=orig.example=someone@corp.test")
    ctx.current_rcpt.relay_address = "someone@orig.example"
    assert (await flt.check(ctx)).final is None
    assert (await flt.check(rcpt_tx("mallory@corp.test"))).final is not None


async def test_postmaster_and_abuse_pass_without_a_lookup() -> None:
    flt = make_filter({**STATIC, "always_accept": []})
    assert (await flt.check(rcpt_tx("PostMaster@corp.test"))).final is None
    assert (await flt.check(rcpt_tx("abuse@corp.test"))).final is not None
    flt = make_filter(STATIC)
    assert (await flt.check(rcpt_tx("abuse@corp.test"))).final is None


async def test_domains_with_method_none_are_not_verified() -> None:
    flt = make_filter({**STATIC, "domains": {"free.test": {"method": "none"}}})
    assert (await flt.check(rcpt_tx("whoever@free.test"))).final is None
    assert (await flt.check(rcpt_tx("whoever@corp.test"))).final is not None


async def test_a_whitelisted_sender_and_test_mode_do_not_skip_verification() -> None:
    cfg = Config.model_validate({
        "test_mode": True, "local_domains": LOCAL_DOMAINS,
        "filters": {"recipient_verify": STATIC,
                    "address_lists": {"whitelist": ["friend@sender.test"]}},
    })
    services = Services.from_config(cfg)
    flt = RecipientVerifyFilter(settings_for(RecipientVerifyFilter, cfg), {}, cfg, services)
    pipeline = Pipeline([flt], declared_symbols(), test_mode=True)
    ctx = rcpt_tx("mallory@corp.test", sender="friend@sender.test")
    ctx.accepted_by = "address_lists"
    result = await pipeline.run(Stage.RCPT, ctx)
    assert result.final is not None and result.final.reply is not None
    assert result.final.reply.code == 550


async def test_too_many_unknown_recipients_in_one_connection_mean_421() -> None:
    flt = make_filter({**STATIC, "harvest": {"max_unknown_per_connection": 3,
                                             "max_unknown_per_client": 0}})
    conn = ConnectionContext(ipaddress.ip_address("192.0.2.10"), 4000, Listener.INBOUND)
    codes = []
    for n in range(5):
        verdict = await flt.check(rcpt_tx(f"guess{n}@corp.test", conn))
        assert verdict.final is not None and verdict.final.reply is not None
        codes.append(verdict.final.reply.code)
    assert codes == [550, 550, 550, 421, 421]
    assert conn.unknown_recipients == 5
    other = ConnectionContext(ipaddress.ip_address("192.0.2.10"), 4001, Listener.INBOUND)
    verdict = await flt.check(rcpt_tx("guess@corp.test", other))
    assert verdict.final is not None and verdict.final.reply.code == 550  # per connection


async def test_unknown_recipients_over_time_from_one_client_mean_421() -> None:
    flt = make_filter({**STATIC, "harvest": {"max_unknown_per_connection": 0,
                                             "max_unknown_per_client": 4}})
    codes = []
    for n in range(6):  # a new connection each time
        conn = ConnectionContext(ipaddress.ip_address("192.0.2.11"), 4000 + n, Listener.INBOUND)
        verdict = await flt.check(rcpt_tx(f"guess{n}@corp.test", conn))
        codes.append(verdict.final.reply.code)
    assert codes == [550, 550, 550, 550, 421, 421]
    conn = ConnectionContext(ipaddress.ip_address("192.0.2.12"), 4000, Listener.INBOUND)
    assert (await flt.check(rcpt_tx("guess@corp.test", conn))).final.reply.code == 550


async def test_a_dry_run_and_score_mode_count_nothing() -> None:
    flt = make_filter({**STATIC, "harvest": {"max_unknown_per_connection": 1}})
    flt.services.dry_run = True
    conn = ConnectionContext(ipaddress.ip_address("192.0.2.13"), 4000, Listener.INBOUND)
    for _ in range(3):
        assert (await flt.check(rcpt_tx("guess@corp.test", conn))).final.reply.code == 550
    assert conn.unknown_recipients == 0
    flt = make_filter({**STATIC, "mode": "score", "harvest": {"max_unknown_per_connection": 1}})
    for _ in range(3):
        assert (await flt.check(rcpt_tx("guess@corp.test", conn))).final.reply.code == 550
    assert conn.unknown_recipients == 0


async def test_an_unreachable_callout_follows_on_unavailable() -> None:
    # Port 1 on loopback refuses at once: the verifier is "down".
    callout = {"host": "127.0.0.1", "port": 1, "timeout": 2}
    flt = make_filter({
        "default": {"method": "callout", "callout": callout},
        "domains": {"lenient.test": {"method": "callout", "callout": callout,
                                     "on_unavailable": "accept"}},
    })
    verdict = await flt.check(rcpt_tx("bob@corp.test"))
    assert verdict.final is not None and verdict.final.decision is Decision.TEMPFAIL
    assert str(verdict.final.reply).startswith("451 4.4.3 <bob@corp.test>: Recipient address "
                                               "verification unavailable")
    assert "cannot connect to 127.0.0.1:1" in verdict.final.symbol.reason
    verdict = await flt.check(rcpt_tx("bob@lenient.test"))
    assert verdict.final is None
    assert [s.name for s in verdict.symbols] == ["RCPT_VERIFY_UNAVAILABLE"]
    assert verdict.symbols[0].reason.startswith("accepted unverified")
