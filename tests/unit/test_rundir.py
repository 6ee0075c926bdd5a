"""A root command that makes data_dir/run first gives it to the data directory's owner, so
the proxy (the service user) can still create its sockets and tokens there."""

from __future__ import annotations

import os
import stat

import pytest

from appliance.backup.lock import exclusive_run
from appliance.rundir import ensure_run_dir


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_run_dir_made_by_root_belongs_to_the_data_dir_owner(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    os.chown(data_dir, 65534, 65534)
    with exclusive_run(data_dir, "backup"):
        pass
    run = (data_dir / "run").stat()
    assert (run.st_uid, run.st_gid) == (65534, 65534)
    assert stat.S_IMODE(run.st_mode) == 0o700


def test_an_existing_run_dir_is_left_as_it_is(tmp_path):
    run = tmp_path / "run"
    run.mkdir(mode=0o755)
    os.chmod(run, 0o755)
    assert ensure_run_dir(tmp_path) == run
    assert stat.S_IMODE(run.stat().st_mode) == 0o755


def test_a_missing_data_dir_is_created(tmp_path):
    assert ensure_run_dir(tmp_path / "new" / "data").is_dir()
