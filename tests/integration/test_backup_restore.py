"""`postwall restore` through the real maintenance window (the proxy as a plain process
started and stopped by appliance/ops, the health gate against the test Postfix), the
disaster path, and a backup taken while mail flows through the proxy."""

from __future__ import annotations

import os
import shutil
import threading
import time
import urllib.request

import pytest
import yaml

from appliance.backup.state import read_state
from appliance.config import loader
from appliance.ops.services import PROXY, ProcessServices
from appliance.storage.facade import Storage
from tests.support.backup_appliance import (
    WHITELIST,
    log_entry,
    make_appliance,
    manifest_of,
)
from tests.support.smtpclient import send_message


@pytest.fixture
def appliance(tmp_path, proxy_factory):  # type: ignore[no-untyped-def]
    yield from make_appliance(tmp_path, proxy_factory)


def test_selective_restore_of_lists_through_the_maintenance_window(appliance):
    assert appliance.backup().returncode == 0
    with Storage.open(appliance.data_dir) as storage:
        for value in WHITELIST[:5]:
            storage.lists.remove("whitelist", value)
        storage.messagelog.record_many([log_entry(1000 + i) for i in range(3)])
    overrides_before = (appliance.data_dir / loader.OVERRIDES_NAME).read_bytes()
    result = appliance.restore("--latest", "--only", "lists")
    assert result.returncode == 0, result.stderr + result.stdout
    assert "health gate passed" in result.stderr
    assert appliance.whitelist() == sorted(WHITELIST)
    # Statistics were not asked for: kept as they are (plus the health gate's probe).
    assert appliance.log_count() >= 43
    assert (appliance.data_dir / loader.OVERRIDES_NAME).read_bytes() == overrides_before


def test_disaster_path_fresh_data_dir_and_config_then_restore(appliance, tmp_path):
    assert appliance.backup().returncode == 0
    [archive] = appliance.files()
    saved = tmp_path / "offsite" / archive.name
    saved.parent.mkdir()
    saved.write_bytes(archive.read_bytes())
    original_config = appliance.config_path.read_bytes()
    # The host is lost: a fresh install has a bare configuration and an empty data_dir.
    shutil.rmtree(appliance.data_dir)
    fresh = {key: appliance.config[key] for key in
             ("listen", "downstream", "local_domains", "data_dir", "ops", "relay_networks")}
    appliance.config_path.write_text(yaml.safe_dump(fresh))
    result = appliance.restore(str(saved))
    assert result.returncode == 0, result.stderr + result.stdout
    assert appliance.config_path.read_bytes() == original_config
    loaded = loader.load(appliance.config_path)
    assert loaded.config.test_mode is True  # the web UI's override came back
    assert loaded.source_of("test_mode") == "override"
    assert appliance.whitelist() == sorted(WHITELIST)
    assert appliance.log_count() >= 40  # and the health gate's probe message
    with Storage.open(appliance.data_dir) as storage:
        assert all(storage.messagelog.get(f"tx{i:05d}") for i in range(40))
    assert (appliance.data_dir / "mail" / "spam" / "kept0001.eml").exists()
    assert read_state(appliance.data_dir).last_verified is None  # a restore claims nothing


def test_a_backup_while_mail_flows_is_a_consistent_snapshot(appliance, recorded):
    services = ProcessServices(loader.load(appliance.config_path).config,
                               appliance.config_path, appliance.home)
    services.start(PROXY)
    host, port = appliance.config["listen"]["inbound"].rsplit(":", 1)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            send_message(host, int(port), b"Subject: warm-up\r\n\r\nhi\r\n",
                         mail_from="a@partner.example", rcpt_tos=["bob@example.com"])
            break
        except OSError:
            time.sleep(0.1)
    stop = threading.Event()
    outcomes: list[bool] = []

    def sender(worker: int) -> None:
        count = 0
        while not stop.is_set():
            body = f"Subject: flow {worker}-{count}\r\n\r\nhello\r\n".encode()
            result = send_message(host, int(port), body, mail_from="a@partner.example",
                                  rcpt_tos=["bob@example.com"])
            outcomes.append(result.accepted)
            count += 1

    threads = [threading.Thread(target=sender, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.5)
        started = time.monotonic()
        result = appliance.backup()
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert result.returncode == 0, result.stderr
    assert outcomes and all(outcomes), f"{outcomes.count(False)} of {len(outcomes)} refused"
    [archive] = appliance.files()
    manifest = manifest_of(archive)
    rows = manifest["databases"][0]["tables"]["message_log"]
    assert rows > 40  # messages logged while the proxy ran are in the snapshot
    print(f"backup during mail flow: {len(outcomes)} messages sent, {rows} log rows, "
          f"{archive.stat().st_size} octets, {elapsed:.2f}s")
    assert os.path.getsize(archive) > 0
    metrics = urllib.request.urlopen(
        f"http://{appliance.config['metrics']['listen']}/metrics", timeout=5
    ).read().decode()
    [age] = [line for line in metrics.splitlines()
             if line.startswith("postwall_backup_last_verified_age_seconds ")]
    assert 0 <= float(age.split()[1]) < 120
    assert "postwall_backup_last_run_failed 0.0" in metrics

