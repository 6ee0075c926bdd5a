"""Release layout: links switched atomically, retention never removes current/previous,
versions and wheel names validated."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from appliance.ops.releases import RELEASE_MARK, ReleaseError, Releases, version_of_wheel


def fake_release(releases: Releases, version: str, when: float) -> None:
    path = releases.dir / version
    (path / "bin").mkdir(parents=True)
    (path / "bin" / "postwall").write_text("#!/bin/sh\n")
    (path / RELEASE_MARK).write_text(version)
    os.utime(path / RELEASE_MARK, (when, when))


@pytest.fixture
def releases(tmp_path: Path) -> Releases:
    r = Releases(tmp_path / "home")
    for number, version in enumerate(["0.1.0", "0.2.0", "0.3.0", "0.4.0", "0.5.0"]):
        fake_release(r, version, 1_000_000 + number)
    return r


def test_switch_moves_current_and_previous(releases: Releases) -> None:
    assert releases.switch("0.1.0") is None
    assert releases.switch("0.2.0") == "0.1.0"
    assert (releases.current(), releases.previous()) == ("0.2.0", "0.1.0")
    assert os.readlink(releases.current_link) == "releases/0.2.0"
    assert (releases.current_link / "bin" / "postwall").exists()


def test_switch_refuses_an_incomplete_release(releases: Releases) -> None:
    (releases.dir / "0.9.0").mkdir()
    with pytest.raises(ReleaseError, match="not installed completely"):
        releases.switch("0.9.0")
    assert releases.current() is None


def test_prune_keeps_n_and_never_current_or_previous(releases: Releases) -> None:
    releases.switch("0.2.0")
    releases.switch("0.1.0")  # current 0.1.0 (oldest), previous 0.2.0
    removed = releases.prune(3)
    assert removed == ["0.3.0", "0.4.0"]
    assert sorted(p.name for p in releases.dir.iterdir()) == ["0.1.0", "0.2.0", "0.5.0"]


def test_prune_keeps_at_least_two(releases: Releases) -> None:
    releases.switch("0.4.0")
    releases.switch("0.5.0")
    releases.prune(1)
    assert sorted(p.name for p in releases.dir.iterdir()) == ["0.4.0", "0.5.0"]


def test_restore_links(releases: Releases) -> None:
    releases.switch("0.1.0")
    releases.switch("0.2.0")
    releases.switch("0.3.0")
    releases.restore_links("0.2.0", "0.1.0")
    assert (releases.current(), releases.previous()) == ("0.2.0", "0.1.0")


@pytest.mark.parametrize("name", ["postwall-0.1.0.tar.gz", "other-0.1.0-py3-none-any.whl",
                                  "postwall-../x-py3-none-any.whl"])
def test_wheel_names_are_checked(name: str) -> None:
    with pytest.raises(ReleaseError):
        version_of_wheel(Path(name))


@pytest.mark.parametrize("version", ["../etc", "a", "", "1/2", "0..1"])
def test_versions_are_checked(releases: Releases, version: str) -> None:
    with pytest.raises(ReleaseError):
        releases.path(version)


def test_a_link_outside_the_releases_is_not_a_release(releases: Releases, tmp_path: Path) -> None:
    releases.current_link.symlink_to(tmp_path)
    assert releases.current() is None
