"""The health probe is only recognised with the token and from loopback; the process
service manager starts, finds and stops by pid file."""

from __future__ import annotations

import ipaddress
import os
import stat
from pathlib import Path

import pytest

from appliance.config.schema import Config
from appliance.ops import probe
from appliance.ops.services import PROXY, ProcessServices, ServiceError

LOOPBACK = ipaddress.ip_address("127.0.0.1")


def message(token: str) -> bytes:
    return f"Subject: x\r\n{probe.HEADER}: {token}\r\n\r\nbody\r\n".encode()


def test_token_is_created_owner_only_and_kept(tmp_path: Path) -> None:
    token = probe.ensure_token(tmp_path)
    assert probe.ensure_token(tmp_path) == token
    mode = stat.S_IMODE(os.stat(probe.token_path(tmp_path)).st_mode)
    assert mode == 0o600


def test_probe_needs_the_token_and_loopback(tmp_path: Path) -> None:
    token = probe.ensure_token(tmp_path)
    assert probe.is_probe(message(token), LOOPBACK, token)
    assert not probe.is_probe(message(token), ipaddress.ip_address("192.0.2.1"), token)
    assert not probe.is_probe(message("x" * 43), LOOPBACK, token)
    assert not probe.is_probe(message(token), LOOPBACK, None)
    # Only in the header block: a body quoting the header does not count.
    body_only = f"Subject: x\r\n\r\n{probe.HEADER}: {token}\r\n".encode()
    assert not probe.is_probe(body_only, LOOPBACK, token)


def test_process_services_start_stop(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "current" / "bin").mkdir(parents=True)
    program = home / "current" / "bin" / "postwall"
    program.write_text("#!/bin/sh\nexec sleep 60\n")
    program.chmod(0o755)
    config = Config(data_dir=tmp_path / "data")
    services = ProcessServices(config, tmp_path / "postwall.yml", home)
    assert not services.is_running(PROXY)
    services.start(PROXY)
    pid = services.pid(PROXY)
    assert pid is not None and services.is_running(PROXY)
    services.stop(PROXY, timeout=5)
    assert not services.is_running(PROXY)
    assert not services.pid_file(PROXY).exists()
    # A stale pid file naming another process is not that service.
    services.pid_file(PROXY).write_text(f"{os.getpid()} 1\n")
    assert not services.is_running(PROXY)


def test_process_services_refuse_unknown_or_missing(tmp_path: Path) -> None:
    config = Config(data_dir=tmp_path / "data")
    services = ProcessServices(config, tmp_path / "postwall.yml", tmp_path / "home")
    with pytest.raises(ServiceError, match="does not exist"):
        services.start(PROXY)
    with pytest.raises(ServiceError, match="not managed"):
        services.start("postfix")
    assert not services.installed("postwall-webui")  # no certificate configured
