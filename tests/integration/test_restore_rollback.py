"""`postwall restore` when the restored files do not work: the health gate fails, the
previous files are put back, the proxy serves again with them, and mail sent all along by
a retrying sender arrives exactly once. And a backup refused before anything changes does
not open the maintenance window at all (no 421 to senders, the proxy never restarts)."""

from __future__ import annotations

import hashlib

import pytest
import yaml

from appliance.config import loader
from appliance.ops.flag import flag_path
from appliance.ops.services import PROXY, ProcessServices
from tests.integration.test_backup_local import damaged_copy
from tests.support.backup_appliance import make_appliance
from tests.support.releases import SenderLoop
from tests.support.services import free_port, wait_for_smtp, wait_until

# Long enough for the proxy to start (about a second here), short enough that the
# failing gate does not dominate the test.
HEALTH_TIMEOUT = 6


@pytest.fixture
def appliance(tmp_path, proxy_factory):  # type: ignore[no-untyped-def]
    yield from make_appliance(tmp_path, proxy_factory)


def _set_health_timeout(appliance, seconds: float) -> None:  # type: ignore[no-untyped-def]
    document = yaml.safe_load(appliance.config_path.read_text())
    document["ops"]["health_timeout"] = seconds
    appliance.config_path.write_text(yaml.safe_dump(document))
    appliance.config = document


def _start_proxy(appliance) -> tuple[ProcessServices, str, int]:  # type: ignore[no-untyped-def]
    config = loader.load(appliance.config_path).config
    services = ProcessServices(config, appliance.config_path, appliance.home)
    services.start(PROXY)
    host, port = appliance.config["listen"]["inbound"].rsplit(":", 1)
    wait_for_smtp(host, int(port), timeout=20)
    return services, host, int(port)


def _sha(path) -> str:  # type: ignore[no-untyped-def]
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_restored_config_that_fails_the_gate_is_rolled_back_and_no_mail_is_lost(
    appliance, recorded
):
    _set_health_timeout(appliance, HEALTH_TIMEOUT)
    overrides = appliance.data_dir / loader.OVERRIDES_NAME
    previous = overrides.read_bytes()
    # The backup holds an override that check-config accepts but that points the proxy at
    # a port where nothing listens: every RCPT (and the gate's probe) gets a 4xx.
    dead = free_port()
    loader.write_overrides(overrides, {"test_mode": True,
                                       "downstream": {"host": "127.0.0.1", "port": dead}})
    assert appliance.backup().returncode == 0
    overrides.write_bytes(previous)
    config_before = _sha(appliance.config_path)
    overrides_mode = overrides.stat().st_mode

    services, host, port = _start_proxy(appliance)
    pid_before = services.pid(PROXY)
    with SenderLoop(host, port, "through-rollback") as sender:
        assert wait_until(lambda: len(sender.accepted) >= 3, 20)
        result = appliance.restore("--latest", "--only", "config")
        count = len(sender.accepted)
        # The proxy with the old configuration delivers again.
        assert wait_until(lambda: len(sender.accepted) >= count + 3, 30)
    assert result.returncode == 1, result.stdout + result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("restore FAILED: restore rolled back: "), result.stderr
    assert "probe message failed" in last, last
    assert "config: 0 added, 1 changed, 0 removed" in result.stdout
    # Every replaced file holds its previous content again, with its mode.
    assert overrides.read_bytes() == previous
    assert overrides.stat().st_mode == overrides_mode
    assert _sha(appliance.config_path) == config_before
    assert loader.load(appliance.config_path).config.downstream.port != dead
    assert not flag_path(appliance.data_dir).exists()
    # Serving with the old files: a proxy started again by the rollback's window.
    assert services.is_running(PROXY) and services.pid(PROXY) != pid_before
    assert not sender.permanent_failures, sender.permanent_failures
    assert sender.temporary_failures >= 1  # it did meet the window and the broken proxy
    messages = recorded.wait_for(len(sender.accepted), timeout=30)
    subjects = sorted(m.message["Subject"] for m in messages)
    assert subjects == sorted(sender.accepted), "lost or duplicated mail"
    print(f"\nrollback: {len(sender.accepted)} messages delivered once, "
          f"{sender.temporary_failures} temporary failures retried")


def test_a_damaged_backup_is_refused_without_opening_the_maintenance_window(
    appliance, tmp_path, recorded
):
    assert appliance.backup().returncode == 0
    [archive] = appliance.files()
    services, host, port = _start_proxy(appliance)
    pid_before = services.pid(PROXY)
    with SenderLoop(host, port, "during-refusal") as sender:
        assert wait_until(lambda: len(sender.accepted) >= 2, 20)
        result = appliance.restore(str(damaged_copy(archive, tmp_path, "corrupted")))
        count = len(sender.accepted)
        assert wait_until(lambda: len(sender.accepted) >= count + 2, 20)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("restore FAILED: ")
    assert "maintenance" not in result.stdout + result.stderr
    assert sender.temporary_failures == 0, "senders saw a 4xx for a refused restore"
    assert services.pid(PROXY) == pid_before
    messages = recorded.wait_for(len(sender.accepted), timeout=30)
    assert sorted(m.message["Subject"] for m in messages) == sorted(sender.accepted)


def test_the_gate_asks_the_appliance_as_restored_on_its_new_port(appliance):
    # A restored configuration may move a listener: the gate must probe the new port,
    # not the one the appliance had before (which nobody serves any more).
    _set_health_timeout(appliance, HEALTH_TIMEOUT)
    overrides = appliance.data_dir / loader.OVERRIDES_NAME
    previous = overrides.read_bytes()
    moved = f"127.0.0.1:{free_port()}"
    loader.write_overrides(overrides, {"listen": {"inbound": moved}})
    assert appliance.backup().returncode == 0
    overrides.write_bytes(previous)

    _start_proxy(appliance)
    result = appliance.restore("--latest", "--only", "config")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "health gate passed" in result.stdout + result.stderr
    host, port = moved.rsplit(":", 1)
    wait_for_smtp(host, int(port), timeout=10)
    assert loader.load(appliance.config_path).config.listen.inbound == moved
