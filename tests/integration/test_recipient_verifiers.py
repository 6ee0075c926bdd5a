"""The callout and LDAP verifiers against real servers on loopback: a recording SMTP
server that knows a fixed set of mailboxes, and a real slapd with test users. Faults:
target down, 4xx answers, LDAP unreachable, wrong bind password, a server that hangs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.config.schema import RecipientVerifySettings
from appliance.lists import ListIndex
from appliance.recipients.result import Existence
from appliance.recipients.verifier import RecipientVerifier, build_plan
from tests.support.ldap_server import LDAPServer, SilentTCPServer
from tests.support.services import RecordingServer, free_port

KNOWN = ("alice@corp.example", "bob@corp.example")
NOTHING = ListIndex()


@pytest.fixture(scope="module")
def mailboxes() -> Iterator[RecordingServer]:
    server = RecordingServer(mailboxes=KNOWN)
    server.start()
    yield server
    server.cleanup()


@pytest.fixture(scope="module")
def deferring() -> Iterator[RecordingServer]:
    server = RecordingServer(tempfail_rcpt=True)
    server.start()
    yield server
    server.cleanup()


def callout_plan(port: int, **callout: object):
    settings = RecipientVerifySettings(default={
        "method": "callout", "callout": {"host": "127.0.0.1", "port": port, **callout},
    })
    return build_plan(settings, "mx.postwall.test").default


def ldap_plan(server: LDAPServer | None, tmp_path: Path, *, url: str | None = None,
              password: str | None = None, timeout: float = 3.0, template: str | None = None):
    assert server is not None or url is not None
    ldap: dict[str, object] = {
        "servers": [url or server.url], "base_dn": "dc=postwall,dc=test", "timeout": timeout,
    }
    if server is not None:
        ldap["bind_dn"] = server.bind_dn
        ldap["bind_password_file"] = str(server.password_file(tmp_path, password=password))
    if template is not None:
        ldap["filter"] = template
    settings = RecipientVerifySettings(default={"method": "ldap", "ldap": ldap})
    return build_plan(settings, "mx.postwall.test").default


# -- callout ---------------------------------------------------------------------------


async def test_callout_by_rcpt_knows_the_mailboxes_and_caches_both_answers(mailboxes):
    verifier = RecipientVerifier()
    plan = callout_plan(mailboxes.port)
    before = len(mailboxes.probes())
    known = await verifier.verify(plan, "Alice@corp.example", NOTHING)
    unknown = await verifier.verify(plan, "mallory@corp.example", NOTHING)
    assert known.existence is Existence.EXISTS and not known.cached
    assert "RCPT: 250" in known.detail
    assert unknown.existence is Existence.UNKNOWN
    assert "550 5.1.1" in unknown.detail
    again = [await verifier.verify(plan, a, NOTHING)
             for a in ("alice@corp.example", "mallory@corp.example")]
    assert [(a.existence, a.cached) for a in again] == [
        (Existence.EXISTS, True), (Existence.UNKNOWN, True)
    ]
    probes = mailboxes.probes()[before:]
    assert probes == [("RCPT", "Alice@corp.example", 250), ("RCPT", "mallory@corp.example", 550)]
    assert verifier.connects == 1  # one probe session asked both
    await verifier.close()


async def test_callout_by_vrfy(mailboxes):
    verifier = RecipientVerifier()
    plan = callout_plan(mailboxes.port, command="vrfy", max_idle_connections=0)
    assert (await verifier.verify(plan, "bob@corp.example", NOTHING)).exists
    unknown = await verifier.verify(plan, "eve@corp.example", NOTHING)
    assert unknown.existence is Existence.UNKNOWN and "VRFY: 550 5.1.1" in unknown.detail
    assert mailboxes.probes()[-2:] == [("VRFY", "bob@corp.example", 252),
                                       ("VRFY", "eve@corp.example", 550)]
    assert verifier.connects == 2  # no idle sessions kept
    await verifier.close()


async def test_concurrent_lookups_of_one_address_ask_once(mailboxes):
    verifier = RecipientVerifier()
    plan = callout_plan(mailboxes.port)
    before = len(mailboxes.probes())
    results = await asyncio.gather(
        *(verifier.verify(plan, "bob@corp.example", NOTHING) for _ in range(5))
    )
    assert all(r.exists for r in results)
    assert len(mailboxes.probes()) - before == 1
    await verifier.close()


async def test_a_callout_target_that_is_down_is_unavailable_and_not_cached():
    verifier = RecipientVerifier()
    plan = callout_plan(free_port(), timeout=2)
    started = time.monotonic()
    result = await verifier.verify(plan, "alice@corp.example", NOTHING)
    assert result.existence is Existence.UNAVAILABLE
    assert "cannot connect to 127.0.0.1" in result.detail
    assert time.monotonic() - started < 2
    assert len(verifier.cache) == 0
    await verifier.close()


async def test_a_callout_target_answering_4xx_is_unavailable(deferring):
    verifier = RecipientVerifier()
    result = await verifier.verify(callout_plan(deferring.port), "alice@corp.example", NOTHING)
    assert result.existence is Existence.UNAVAILABLE
    assert "451 4.3.0 Mailbox lookup temporarily unavailable" in result.detail
    assert len(verifier.cache) == 0
    await verifier.close()


async def test_a_callout_target_that_hangs_times_out():
    verifier = RecipientVerifier()
    with SilentTCPServer() as silent:
        started = time.monotonic()
        result = await verifier.verify(callout_plan(silent.port, timeout=0.5),
                                       "alice@corp.example", NOTHING)
    assert result.existence is Existence.UNAVAILABLE
    assert "no reply within 0.5s" in result.detail
    assert time.monotonic() - started < 2
    await verifier.close()


async def test_a_restarted_callout_target_is_reconnected(mailboxes):
    verifier = RecipientVerifier()
    plan = callout_plan(mailboxes.port)
    assert (await verifier.verify(plan, "alice@corp.example", NOTHING)).exists
    mailboxes.stop()  # the idle probe session dies with it
    mailboxes.start()
    assert (await verifier.verify(plan, "bob@corp.example", NOTHING)).exists
    assert verifier.connects == 2
    await verifier.close()


# -- LDAP ------------------------------------------------------------------------------------


async def test_ldap_finds_mail_and_proxy_addresses(ldap_server, tmp_path):
    verifier = RecipientVerifier()
    plan = ldap_plan(ldap_server, tmp_path)
    found = await verifier.verify(plan, "alice@ldap.example", NOTHING)
    assert found.exists and "uid=alice,ou=people" in found.detail
    alias = await verifier.verify(plan, "A.Smith@LDAP.example", NOTHING)
    assert alias.exists and "uid=alice" in alias.detail
    assert (await verifier.verify(plan, "sales@ldap.example", NOTHING)).exists
    unknown = await verifier.verify(plan, "mallory@ldap.example", NOTHING)
    assert unknown.existence is Existence.UNKNOWN and "no entry" in unknown.detail
    assert (await verifier.verify(plan, "alice@ldap.example", NOTHING)).cached
    assert verifier.connects == 1  # the bound connection is reused
    await verifier.close()


async def test_an_ldap_filter_injection_matches_nothing(ldap_server, tmp_path):
    verifier = RecipientVerifier()
    plan = ldap_plan(ldap_server, tmp_path, template="(mail={address})")
    for address in ("*)(uid=*@ldap.example", "*@ldap.example", "alice@ldap.example)(|(mail=*"):
        result = await verifier.verify(plan, address, NOTHING)
        assert result.existence is Existence.UNKNOWN, (address, result)
        assert "\\2a" in result.detail
    await verifier.close()


async def test_ldap_lookups_run_off_the_event_loop(ldap_server, tmp_path):
    verifier = RecipientVerifier()
    plan = ldap_plan(ldap_server, tmp_path)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.001)
            ticks += 1

    task = asyncio.create_task(ticker())
    results = await asyncio.gather(*(verifier.verify(plan, f"user{n}@ldap.example", NOTHING)
                                     for n in range(20)))
    task.cancel()
    assert all(r.existence is Existence.UNKNOWN for r in results)
    assert ticks > 0
    await verifier.close()


async def test_ldap_with_a_wrong_bind_password_is_unavailable(ldap_server, tmp_path):
    verifier = RecipientVerifier()
    plan = ldap_plan(ldap_server, tmp_path, password="not-the-password")
    result = await verifier.verify(plan, "alice@ldap.example", NOTHING)
    assert result.existence is Existence.UNAVAILABLE
    assert "invalidCredentials" in result.detail and ldap_server.bind_dn in result.detail
    assert "not-the-password" not in result.detail
    await verifier.close()


async def test_ldap_unreachable_is_unavailable(tmp_path):
    verifier = RecipientVerifier()
    plan = ldap_plan(None, tmp_path, url=f"ldap://127.0.0.1:{free_port()}", timeout=2)
    started = time.monotonic()
    result = await verifier.verify(plan, "alice@ldap.example", NOTHING)
    assert result.existence is Existence.UNAVAILABLE
    assert "LDAPSocketOpenError" in result.detail or "LDAPSocket" in result.detail, result
    assert time.monotonic() - started < 2
    await verifier.close()


async def test_an_ldap_server_that_hangs_times_out(tmp_path):
    verifier = RecipientVerifier()
    with SilentTCPServer() as silent:
        plan = ldap_plan(None, tmp_path, url=silent.url, timeout=0.5)
        started = time.monotonic()
        result = await verifier.verify(plan, "alice@ldap.example", NOTHING)
        elapsed = time.monotonic() - started
    assert result.existence is Existence.UNAVAILABLE, result
    assert elapsed < 2, elapsed
    await verifier.close()


async def test_ldap_falls_over_to_the_next_server_and_back(ldap_server, tmp_path):
    verifier = RecipientVerifier()
    down = f"ldap://127.0.0.1:{free_port()}"
    settings = RecipientVerifySettings(default={"method": "ldap", "ldap": {
        "servers": [down, ldap_server.url], "base_dn": "dc=postwall,dc=test", "timeout": 2,
        "bind_dn": ldap_server.bind_dn,
        "bind_password_file": str(ldap_server.password_file(tmp_path)),
    }})
    plan = build_plan(settings, "mx.test").default
    assert (await verifier.verify(plan, "bob@ldap.example", NOTHING)).exists
    await verifier.close()


async def test_a_stopped_slapd_is_unavailable_and_a_restarted_one_used_again(tmp_path):
    server = LDAPServer()
    server.start()
    try:
        verifier = RecipientVerifier()
        plan = ldap_plan(server, tmp_path, timeout=2)
        assert (await verifier.verify(plan, "x@ldap.example", NOTHING)).existence is (
            Existence.UNKNOWN)
        with server.stopped():
            result = await verifier.verify(plan, "y@ldap.example", NOTHING)
            assert result.existence is Existence.UNAVAILABLE, result
        result = await verifier.verify(plan, "z@ldap.example", NOTHING)
        assert result.existence is Existence.UNKNOWN, result
        await verifier.close()
    finally:
        server.cleanup()
