"""Shared fixtures: real services on loopback (see tests/support/services.py).

Session-scoped: `recorder` (the internal mail server) and `postfix` (127.0.0.1:125, relaying
everything to the recorder). Per test: `recorded` (the recorder, emptied), `proxy_factory`
and `proxy` (the proxy under test as a subprocess, downstream = the test Postfix).

Tests under tests/integration/ are marked `integration` automatically; integration tests
are skipped when Postfix is not installed. Import helpers as ``tests.support.<module>``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

_REPO_ROOT = Path(__file__).resolve().parents[1]
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))  # makes `tests.support` importable in any import mode

from tests.support.clamd import ClamdInstance, clamd_unavailable_reason  # noqa: E402
from tests.support.dns_server import NSD_BIN, AuthoritativeDNS  # noqa: E402
from tests.support.ldap_server import (  # noqa: E402
    LDAPServer,
    LDAPUser,
    ldap_unavailable_reason,
)
from tests.support.samba import SambaServer, samba_unavailable_reason  # noqa: E402
from tests.support.services import (  # noqa: E402
    POSTFIX_BIN,
    PostfixInstance,
    ProxyProcess,
    RecordingServer,
    ServiceError,
)

_POSTFIX_KEY = pytest.StashKey[PostfixInstance]()
_RECORDER_KEY = pytest.StashKey[RecordingServer]()
_PROXIES_KEY = pytest.StashKey[list[ProxyProcess]]()

ProxyFactory = Callable[..., ProxyProcess]


def postfix_unavailable_reason() -> str | None:
    if not POSTFIX_BIN.exists():
        return f"Postfix is not installed ({POSTFIX_BIN} missing): run scripts/install-test-deps"
    if os.geteuid() != 0:
        return "the test Postfix runs as a plain process and needs root (port 125, postfix user)"
    return None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "proxy_config(overrides, workers=1): config overrides for the `proxy` fixture",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    integration_dir = Path(__file__).resolve().parent / "integration"
    reason = postfix_unavailable_reason()
    for item in items:
        if integration_dir in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.integration)
        if reason and item.get_closest_marker("integration"):
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """On failure, append the proxies' stderr and Postfix's maillog to the report."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    for proxy in item.stash.get(_PROXIES_KEY, []):
        text = proxy.stderr_text()
        if text:
            report.sections.append((f"proxy PID {proxy.pid} stderr", _tail(text, 80)))
    postfix = item.session.stash.get(_POSTFIX_KEY, None)
    if postfix is not None and "postfix" in getattr(item, "fixturenames", ()):
        report.sections.append(("postfix maillog (tail)", postfix.maillog_tail(40)))


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------------------
# Services
# --------------------------------------------------------------------------------------


def _start_or_error(service: PostfixInstance | RecordingServer) -> str | None:
    try:
        service.start()
    except ServiceError as exc:
        return str(exc)
    return None


@pytest.fixture(scope="session")
def recorder(request: pytest.FixtureRequest) -> Iterator[RecordingServer]:
    """The recording SMTP server standing in for the internal mail server."""
    server = RecordingServer()
    error = _start_or_error(server)
    if error:
        server.cleanup()
        pytest.fail(f"could not start the recording server: {error}", pytrace=False)
    request.session.stash[_RECORDER_KEY] = server
    yield server
    del request.session.stash[_RECORDER_KEY]
    server.cleanup()


@pytest.fixture(scope="session")
def postfix(request: pytest.FixtureRequest, recorder: RecordingServer) -> Iterator[PostfixInstance]:
    """Postfix on 127.0.0.1:125 (POSTWALL_TEST_POSTFIX_PORT), relaying to `recorder`."""
    reason = postfix_unavailable_reason()
    if reason:
        pytest.skip(reason)
    instance = PostfixInstance(relay_port=recorder.port)
    error = _start_or_error(instance)
    if error:
        instance.cleanup()
        pytest.fail(f"could not start the test Postfix: {error}", pytrace=False)
    request.session.stash[_POSTFIX_KEY] = instance
    yield instance
    del request.session.stash[_POSTFIX_KEY]
    instance.cleanup()


@pytest.fixture(scope="session")
def dns_server() -> Iterator[AuthoritativeDNS]:
    """A real authoritative DNS server (NSD) on 127.0.0.1, UDP and TCP. Test modules
    publish their own zones with ``dns_server.set_zone(origin, records)`` (use origins
    unique to the module) and point the proxy at ``dns_server.nameserver``."""
    if not NSD_BIN.exists():
        pytest.skip(f"NSD is not installed ({NSD_BIN}): run scripts/install-test-deps")
    server = AuthoritativeDNS()
    server.set_zone("postwall.test", ["@ IN A 127.0.0.1"])
    try:
        server.start()
    except ServiceError as exc:
        server.cleanup()
        pytest.fail(f"could not start NSD: {exc}", pytrace=False)
    yield server
    server.cleanup()


@pytest.fixture(scope="session")
def clamd() -> Iterator[ClamdInstance]:
    """A real clamd with only the EICAR test signatures (tests/support/clamd.py), on a
    unix socket (``clamd.address``) and a loopback TCP port (``clamd.tcp_address``).
    Tests that stop clamd start their own ClamdInstance instead of stopping this one."""
    reason = clamd_unavailable_reason()
    if reason:
        pytest.skip(reason)
    instance = ClamdInstance(tcp=True)
    try:
        instance.start()
    except ServiceError as exc:
        instance.cleanup()
        pytest.fail(f"could not start clamd: {exc}", pytrace=False)
    yield instance
    instance.cleanup()


# The directory of the recipient verification tests (tests/integration/test_recipients.py).
LDAP_TEST_USERS = (
    LDAPUser("alice", "alice@ldap.example", ("SMTP:alice@ldap.example",
                                             "smtp:a.smith@ldap.example")),
    LDAPUser("bob", "bob@ldap.example"),
    LDAPUser("carol", "carol@ldap.example", ("SMTP:carol@ldap.example",
                                             "smtp:sales@ldap.example")),
)


@pytest.fixture(scope="session")
def ldap_server() -> Iterator[LDAPServer]:
    """A real OpenLDAP slapd on a loopback port with LDAP_TEST_USERS and a service
    account (``bind_dn``, ``bind_password``, ``password_file(dir)``). Tests that stop
    slapd start their own LDAPServer instead of stopping this one."""
    reason = ldap_unavailable_reason()
    if reason:
        pytest.skip(reason)
    server = LDAPServer(LDAP_TEST_USERS)
    try:
        server.start()
    except ServiceError as exc:
        server.cleanup()
        pytest.fail(f"could not start slapd: {exc}", pytrace=False)
    yield server
    server.cleanup()


@pytest.fixture(scope="session")
def samba() -> Iterator[SambaServer]:
    """A real smbd on a free loopback port with the share "Appliance Backups" (a name
    with a space) for the user `samba.user` / `samba.password` (tests/support/samba.py).
    Tests empty the share themselves (`samba.clear()`)."""
    reason = samba_unavailable_reason()
    if reason:
        pytest.skip(reason)
    server = SambaServer()
    try:
        server.start()
    except ServiceError as exc:
        server.cleanup()
        pytest.fail(f"could not start smbd: {exc}", pytrace=False)
    yield server
    server.cleanup()


def _ensure_services_running(session: pytest.Session) -> None:
    recorder = session.stash.get(_RECORDER_KEY, None)
    if recorder is not None and not recorder.is_running:
        recorder.start()
    postfix = session.stash.get(_POSTFIX_KEY, None)
    if postfix is not None and not postfix.is_running:
        postfix.start()


@pytest.fixture(autouse=True)
def _services_stay_up(request: pytest.FixtureRequest) -> Iterator[None]:
    """Restart a session service that a test (or a crash) left stopped.

    Cheap when nothing was started: it only looks at the session stash.
    """
    _ensure_services_running(request.session)
    yield
    _ensure_services_running(request.session)


@pytest.fixture
def recorded(request: pytest.FixtureRequest, recorder: RecordingServer) -> RecordingServer:
    """The recorder, emptied for this test (after Postfix's queue has drained)."""
    postfix = request.session.stash.get(_POSTFIX_KEY, None)
    if postfix is not None and postfix.is_running:
        postfix.wait_queue_empty(timeout=10.0)
    recorder.clear()
    return recorder


# --------------------------------------------------------------------------------------
# The proxy under test
# --------------------------------------------------------------------------------------


@pytest.fixture
def proxy_factory(
    request: pytest.FixtureRequest, postfix: PostfixInstance, recorder: RecordingServer
) -> Iterator[ProxyFactory]:
    """Start proxies: ``proxy_factory(config=None, *, workers=1, start=True, **overrides)``.

    `config` and keyword overrides are deep-merged over the defaults (listeners on free
    loopback ports, downstream = the test Postfix, local_domains = [example.com]). Every
    proxy is stopped at the end of the test.
    """
    proxies: list[ProxyProcess] = []
    request.node.stash[_PROXIES_KEY] = proxies

    def make(
        config: Mapping[str, Any] | None = None,
        /,
        *,
        workers: int = 1,
        start: bool = True,
        **overrides: Any,
    ) -> ProxyProcess:
        merged = {**(config or {}), **overrides}
        proxy = ProxyProcess(downstream_port=postfix.port, overrides=merged, workers=workers)
        proxies.append(proxy)
        if start:
            proxy.start()
        return proxy

    yield make
    for proxy in proxies:
        proxy.cleanup()


@pytest.fixture
def proxy(request: pytest.FixtureRequest, proxy_factory: ProxyFactory) -> ProxyProcess:
    """A started proxy with the default test config.

    ``@pytest.mark.proxy_config({"limits": {"max_recipients": 2}}, workers=2)`` changes it.
    """
    marker = request.node.get_closest_marker("proxy_config")
    config: Mapping[str, Any] = {}
    workers = 1
    if marker is not None:
        config = marker.args[0] if marker.args else {}
        workers = int(marker.kwargs.get("workers", 1))
    return proxy_factory(config, workers=workers)
