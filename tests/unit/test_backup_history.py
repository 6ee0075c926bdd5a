"""The history of backup runs in the state file, the run in progress, and the "Back up
now" request file the web UI writes and `postwall backup` consumes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from appliance.backup import state
from appliance.backup.errors import BackupError
from appliance.backup.request import (
    consume_request,
    read_request,
    request_path,
    write_request,
)

T0 = datetime(2024, 5, 1, 2, 30, tzinfo=UTC)


def verified(at: datetime, name: str, *, by: str | None = None) -> state.RunRecord:
    backups = [state.StoredBackup(f"old-{i}.tar.gz", 1000 + i, state.stamp(at - timedelta(days=i)))
               for i in (2, 1)]
    backups.append(state.StoredBackup(name, 4096, state.stamp(at)))
    return state.RunRecord(
        started=state.stamp(at), finished=state.stamp(at + timedelta(seconds=42)),
        result=state.VERIFIED, seconds=42.0, name=name, size=4096, requested_by=by,
        targets=[state.TargetRecord("directory /backups", backups),
                 state.TargetRecord("SMB share \\\\fs\\Appliance Backups (port 445)", [],
                                    "listing failed: timed out")],
    )


def failed(at: datetime, error: str) -> state.RunRecord:
    return state.RunRecord(started=state.stamp(at), finished=state.stamp(at),
                           result=state.FAILED, seconds=1.5, error=error)


def test_runs_are_recorded_newest_first_with_what_each_target_held(tmp_path: Path):
    state.record_run(tmp_path, verified(T0, "b1.tar.gz", by="alice"))
    state.record_run(tmp_path, failed(T0 + timedelta(days=1), "SMB share: logon refused"))
    read = state.read_state(tmp_path)
    assert [r.result for r in read.history] == [state.FAILED, state.VERIFIED]
    first = read.history[1]
    assert first == verified(T0, "b1.tar.gz", by="alice")  # every field survives the file
    assert first.targets[0].backups[-1] == state.StoredBackup("b1.tar.gz", 4096, state.stamp(T0))
    assert first.targets[1].error == "listing failed: timed out"
    # The summary `postwall status` reads: the failure does not erase the verified one.
    assert read.last_verified_name == "b1.tar.gz" and read.verified_at() == T0
    assert read.last_result == "failed" and read.last_error == "SMB share: logon refused"
    assert read.targets == ["directory /backups", "SMB share \\\\fs\\Appliance Backups (port 445)"]


def test_an_unverified_run_is_history_but_not_a_verified_backup(tmp_path: Path):
    run = verified(T0, "b1.tar.gz")
    run.result = state.UNVERIFIED
    state.record_run(tmp_path, run)
    read = state.read_state(tmp_path)
    assert read.history[0].result == state.UNVERIFIED
    assert read.last_verified is None and read.last_result is None


def test_the_history_is_capped(tmp_path: Path):
    for day in range(state.HISTORY_KEEP + 5):
        state.record_run(tmp_path, failed(T0 + timedelta(days=day), f"error {day}"))
    history = state.read_state(tmp_path).history
    assert len(history) == state.HISTORY_KEEP
    assert history[0].error == f"error {state.HISTORY_KEEP + 4}"


def test_the_state_file_is_group_readable_not_world_readable(tmp_path: Path):
    state.record_run(tmp_path, verified(T0, "b1.tar.gz"))
    info = state.state_path(tmp_path).stat()
    assert info.st_mode & 0o777 == 0o640
    assert info.st_gid == tmp_path.stat().st_gid


def test_a_broken_history_entry_is_skipped_not_fatal(tmp_path: Path):
    state.record_run(tmp_path, verified(T0, "b1.tar.gz"))
    path = state.state_path(tmp_path)
    raw = json.loads(path.read_text())
    raw["history"].insert(0, "not an entry")
    raw["history"].insert(0, {"started": "x"})  # missing required fields
    raw["running"] = [1, 2]
    path.write_text(json.dumps(raw))
    read = state.read_state(tmp_path)
    assert [r.name for r in read.history] == ["b1.tar.gz"]
    assert read.running is None and read.last_verified_name == "b1.tar.gz"


def test_the_run_in_progress_counts_only_while_its_process_lives(tmp_path: Path):
    state.record_start(tmp_path, T0, "alice")
    running = state.read_state(tmp_path).running_now()
    assert running is not None and running.pid == os.getpid() and running.requested_by == "alice"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    current = state.read_state(tmp_path)
    assert current.running is not None
    current.running.pid = int(dead.stdout)  # that process has ended (a killed run)
    state.write_state(tmp_path, current)
    assert state.read_state(tmp_path).running_now() is None
    state.record_run(tmp_path, failed(T0, "x"))
    assert state.read_state(tmp_path).running is None  # a recorded run ends it


# -- the request file --------------------------------------------------------------------


def test_one_request_at_a_time_and_consuming_it_removes_it(tmp_path: Path):
    assert read_request(tmp_path) is None
    assert write_request(tmp_path, "alice", T0) is None
    pending = write_request(tmp_path, "bob", T0 + timedelta(minutes=1))
    assert pending is not None and pending.by == "alice" and pending.at == T0
    assert json.loads(request_path(tmp_path).read_text()) == {"by": "alice",
                                                              "at": "2024-05-01T02:30:00+00:00"}
    assert [p.name for p in request_path(tmp_path).parent.iterdir()] == ["backup-request"]
    taken = consume_request(tmp_path)
    assert taken is not None and taken.by == "alice"
    assert not request_path(tmp_path).exists() and consume_request(tmp_path) is None
    assert write_request(tmp_path, "bob", T0) is None  # a new click after the run starts


@pytest.mark.parametrize("content", [b"", b"{not json", b'{"by": "x"}', b"\xff\xfe",
                                     b'{"by": "x", "at": "yesterday"}'])
def test_a_garbled_request_is_still_a_request_and_is_consumed(tmp_path: Path, content: bytes):
    path = request_path(tmp_path)
    path.parent.mkdir()
    path.write_bytes(content)
    pending = read_request(tmp_path)
    assert pending is not None and pending.by == "unknown"
    assert consume_request(tmp_path) is not None and not path.exists()


def test_a_symlinked_request_is_not_followed(tmp_path: Path):
    secret = tmp_path / "secret"
    secret.write_text('{"by": "from the secret file", "at": "2024-01-01T00:00:00+00:00"}')
    path = request_path(tmp_path)
    path.parent.mkdir()
    path.symlink_to(secret)
    pending = consume_request(tmp_path)
    assert pending is not None and pending.by == "unknown"
    assert not path.is_symlink() and secret.exists()  # the link went, its target stays


def test_an_unwritable_run_directory_is_a_clear_error(tmp_path: Path):
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    (tmp_path / "run").mkdir(mode=0o500)
    with pytest.raises(BackupError, match="cannot write the backup request"):
        write_request(tmp_path, "alice", T0)
