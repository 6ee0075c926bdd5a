"""`postwall upgrade` end to end: real release venvs in a temporary --home, the proxy run
by the plain-process service manager against the test Postfix, mail sent all along.

Wheels of this work tree are built once per module: 0.1.0 (installed first), 0.1.1 (a
good upgrade) and 0.1.2, DELIBERATELY BROKEN: it starts and greets, but every message
fails at DATA (451), so the health gate's probe fails and the upgrade must roll back."""

from __future__ import annotations

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from appliance.config import loader
from appliance.ops.releases import Releases
from appliance.ops.services import PROXY, ProcessServices
from tests.support.releases import PortWatch, SenderLoop, build_wheel
from tests.support.services import free_port, wait_for_smtp, wait_until

BROKEN = {"appliance/smtp/handler.py": (
    "        await runtime.pipeline.run(Stage.DATA, tx)\n",
    "        raise RuntimeError('a deliberately broken release')\n",
)}


@pytest.fixture(scope="module")
def wheels(tmp_path_factory):
    dest = tmp_path_factory.mktemp("wheels")
    jobs = {"0.1.0": None, "0.1.1": None, "0.1.2": BROKEN}
    with ThreadPoolExecutor(3) as pool:
        futures = {v: pool.submit(build_wheel, dest, v, p) for v, p in jobs.items()}
        return {v: f.result() for v, f in futures.items()}


@pytest.fixture(scope="module")
def appliance(wheels, tmp_path_factory, postfix):
    """0.1.0 installed and serving, as the postwall role leaves a host."""
    base = tmp_path_factory.mktemp("appliance")
    home = base / "opt-postwall"
    config_path = base / "postwall.yml"
    settings = {
        "listen": {"inbound": f"127.0.0.1:{free_port()}", "relay": f"127.0.0.1:{free_port()}"},
        "relay_networks": ["127.0.0.0/8"],
        "downstream": {"host": "127.0.0.1", "port": postfix.port, "timeout": 10},
        "local_domains": ["example.com"],
        "data_dir": str(base / "data"),
        "metrics": {"listen": None},
        "smtp": {"hostname": "postwall.test"},
        "ops": {"service_manager": "process", "serve_workers": 1, "health_timeout": 20,
                "drain_timeout": 10},
    }
    config_path.write_text(yaml.safe_dump(settings))
    releases = Releases(home)
    releases.install(str(wheels["0.1.0"]), "0.1.0", pip_args=[])
    releases.switch("0.1.0")
    config = loader.load(config_path).config
    services = ProcessServices(config, config_path, home)
    services.start(PROXY)
    host, port = loader.load(config_path).config.listen.inbound.rsplit(":", 1)
    wait_for_smtp(host, int(port), timeout=30, any_greeting=True)
    yield home, config_path, services, (host, int(port))
    services.stop(PROXY, timeout=15)


def serving_release(services: ProcessServices) -> str:
    pid = services.pid(PROXY)
    assert pid is not None, "the proxy is not running"
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    interpreter = argv[0].decode()  # releases/VERSION/bin/python, from the script's #!
    return Path(interpreter).parent.parent.name


def run_upgrade(home: Path, config_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    program = home / "current" / "bin" / "postwall"  # the installed release runs it
    return subprocess.run(
        [str(program), "upgrade", "--config", str(config_path), "--home", str(home),
         "--no-backup", *args],
        capture_output=True, text=True, timeout=300,
    )


def upgrade_under_load(appliance, recorded, prefix: str, *args: str):
    home, config_path, _services, (host, port) = appliance
    with SenderLoop(host, port, prefix) as sender, PortWatch(host, port) as watch:
        assert wait_until(lambda: len(sender.accepted) >= 2, 20)
        started = time.monotonic()
        result = run_upgrade(home, config_path, *args)
        seconds = time.monotonic() - started
        count = len(sender.accepted)
        assert wait_until(lambda: len(sender.accepted) >= count + 2, 60), result.stderr
    assert not sender.permanent_failures, sender.permanent_failures
    messages = recorded.wait_for(len(sender.accepted), timeout=30)
    subjects = sorted(m.message["Subject"] for m in messages)
    assert subjects == sorted(sender.accepted), "mail lost or duplicated during the upgrade"
    print(f"\n{' '.join(args)}: exit {result.returncode} in {seconds:.1f}s; port refused "
          f"{watch.refused_seconds:.3f}s (longest {watch.longest_gap:.3f}s, {watch.probes} "
          f"probes); {len(sender.accepted)} messages, {sender.temporary_failures} retries\n"
          f"{result.stderr.strip()}\n{result.stdout.strip()}")
    return result, watch


@pytest.mark.timeout(900)
def test_upgrade_rollback_on_broken_release_and_manual_rollback(appliance, wheels, recorded):
    home, _config_path, services, _address = appliance
    releases = Releases(home)
    assert serving_release(services) == "0.1.0"

    result, watch = upgrade_under_load(appliance, recorded, "good", "--wheel",
                                       str(wheels["0.1.1"]))
    assert result.returncode == 0, result.stderr
    assert "upgraded 0.1.0 -> 0.1.1" in result.stdout
    assert releases.current() == "0.1.1" and releases.previous() == "0.1.0"
    assert serving_release(services) == "0.1.1"
    assert watch.refused_seconds < 1.0

    recorded.clear()
    result, watch = upgrade_under_load(appliance, recorded, "broken", "--wheel",
                                       str(wheels["0.1.2"]))
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("upgrade failed: upgrade to 0.1.2 failed and was rolled back; "
                           "0.1.1 serves again: probe message")
    assert releases.current() == "0.1.1" and releases.previous() == "0.1.0"
    assert serving_release(services) == "0.1.1"

    recorded.clear()
    result, _watch = upgrade_under_load(appliance, recorded, "back", "--rollback")
    assert result.returncode == 0, result.stderr
    assert "rolled back 0.1.1 -> 0.1.0" in result.stdout
    assert releases.current() == "0.1.0" and releases.previous() == "0.1.1"
    assert serving_release(services) == "0.1.0"
    # The health probes were judged, never delivered.
    assert not [m for m in recorded.messages() if b"Postwall health check" in m.content]


def test_a_second_upgrade_is_refused_while_one_runs(appliance, wheels):
    home, config_path, _services, _address = appliance
    import fcntl
    import os

    lock = Path(loader.load(config_path).config.data_dir) / "run" / "upgrade.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, b"pid 1: upgrade\n", 0)
        result = run_upgrade(home, config_path, "--wheel", str(wheels["0.1.1"]))
    finally:
        os.close(fd)
    assert result.returncode == 1
    assert "upgrade.lock is held (pid 1: upgrade); upgrade not started" in result.stderr
