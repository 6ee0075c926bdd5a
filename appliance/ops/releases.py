"""The release layout the postwall role installs, and the moves an upgrade makes in it:

    /opt/postwall/releases/VERSION/   one virtual environment per release, never changed
                                      once installed (marked complete by RELEASE_MARK)
    /opt/postwall/current  -> releases/VERSION   the one in use (systemd runs current/bin)
    /opt/postwall/previous -> releases/VERSION   the one before, for --rollback
    /opt/postwall/wheels/                        wheels given with --wheel

Links are switched atomically (a new link under a temporary name renamed over the old),
so `current` always names a complete release.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from importlib.util import find_spec
from pathlib import Path

RELEASE_MARK = ".postwall-release"
VERSION_RE = re.compile(r"^[0-9][0-9A-Za-z.+!_-]{0,63}$")
WHEEL_RE = re.compile(r"^postwall-([0-9][0-9A-Za-z.+!_]*)-py3-none-any\.whl$")
INSTALL_TIMEOUT = 900


class ReleaseError(Exception):
    """A release cannot be installed, found or switched to; the message says why."""


def version_of_wheel(wheel: Path) -> str:
    match = WHEEL_RE.match(wheel.name)
    if match is None:
        raise ReleaseError(
            f"{wheel.name}: not a Postwall wheel (postwall-VERSION-py3-none-any.whl)"
        )
    return match.group(1)


def check_version(version: str) -> str:
    if not VERSION_RE.match(version) or ".." in version:
        raise ReleaseError(f"{version!r} is not a version number")
    return version


def _tail(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


class Releases:
    def __init__(self, home: Path) -> None:
        self.home = Path(home)
        self.dir = self.home / "releases"
        self.current_link = self.home / "current"
        self.previous_link = self.home / "previous"
        self.wheels = self.home / "wheels"

    def path(self, version: str) -> Path:
        return self.dir / check_version(version)

    def is_complete(self, version: str) -> bool:
        release = self.path(version)
        return (release / RELEASE_MARK).is_file() and (release / "bin" / "postwall").exists()

    def _target(self, link: Path) -> str | None:
        try:
            target = Path(os.readlink(link))
        except OSError:
            return None
        if not target.is_absolute():
            target = link.parent / target
        if target.parent.resolve() != self.dir.resolve():
            return None
        return target.name

    def current(self) -> str | None:
        return self._target(self.current_link)

    def previous(self) -> str | None:
        return self._target(self.previous_link)

    def installed(self) -> list[str]:
        """Versions present, oldest install first."""
        if not self.dir.is_dir():
            return []
        found = []
        for entry in self.dir.iterdir():
            if entry.is_dir() and not entry.is_symlink() and not entry.name.startswith("."):
                mark = entry / RELEASE_MARK
                when = mark.stat().st_mtime if mark.exists() else entry.stat().st_mtime
                found.append((when, entry.name))
        return [name for _, name in sorted(found)]

    # -- installing -------------------------------------------------------------------

    def install(self, spec: str, version: str, *, pip_args: list[str],
                compile_bytecode: bool = True) -> Path:
        """A new virtual environment releases/VERSION with `spec` (a wheel file or
        `postwall==VERSION`) installed; reused if a complete one exists."""
        release = self.path(version)
        if self.is_complete(version):
            return release
        if release.exists():
            shutil.rmtree(release)  # a half install from an interrupted run
        self.dir.mkdir(parents=True, exist_ok=True)
        outer_pip = find_spec("pip") is not None
        venv = [sys.executable, "-m", "venv", *(["--without-pip"] if outer_pip else []),
                str(release)]
        self._run(venv, f"create the virtual environment {release}")
        if outer_pip:  # this release's pip installs into the new environment
            pip = [sys.executable, "-m", "pip", "--python", str(release / "bin" / "python")]
        else:
            pip = [str(release / "bin" / "python"), "-m", "pip"]
        find_links = ["--find-links", str(self.wheels)] if self.wheels.is_dir() else []
        try:
            self._run([*pip, "install", "--no-compile", "--disable-pip-version-check",
                       *find_links, *pip_args, spec], f"install {spec}")
            reported = self._run([str(release / "bin" / "postwall"), "--version"],
                                 "run the new release").strip()
            if not reported.endswith(f" {version}"):
                raise ReleaseError(f"{spec} installed {reported!r}, not version {version}")
            if compile_bytecode:
                self._run([str(release / "bin" / "python"), "-m", "compileall", "-q",
                           str(release / "lib")], "compile the new release")
        except ReleaseError:
            shutil.rmtree(release, ignore_errors=True)
            raise
        (release / RELEASE_MARK).write_text(f"{version} installed {time.strftime('%F %T')}\n")
        return release

    @staticmethod
    def _run(argv: list[str], what: str) -> str:
        try:
            result = subprocess.run(  # noqa: S603 - our interpreter and the release's
                argv, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, check=False,
                env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ReleaseError(f"cannot {what}: {exc}") from exc
        if result.returncode != 0:
            raise ReleaseError(f"cannot {what}: {_tail(result.stderr or result.stdout)}")
        return result.stdout

    def check_config(self, version: str, config_path: Path) -> None:
        program = self.path(version) / "bin" / "postwall"
        try:
            result = subprocess.run(  # noqa: S603 - the release's own program
                [str(program), "check-config", "--config", str(config_path)],
                capture_output=True, text=True, timeout=120, check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ReleaseError(f"check-config of {version} could not run: {exc}") from exc
        if result.returncode != 0:
            raise ReleaseError(
                f"{version} refuses the live configuration {config_path}: "
                f"{_tail(result.stderr or result.stdout)}"
            )

    # -- switching --------------------------------------------------------------------

    def _point(self, link: Path, version: str) -> None:
        tmp = link.with_name(f".{link.name}.{os.getpid()}")
        tmp.unlink(missing_ok=True)
        os.symlink(Path("releases") / version, tmp)
        os.replace(tmp, link)

    def switch(self, version: str) -> str | None:
        """Make `version` current and the one it replaces previous; returns that one."""
        if not self.is_complete(version):
            raise ReleaseError(f"release {version} is not installed completely")
        old = self.current()
        if old == version:
            return old
        if old is not None:
            self._point(self.previous_link, old)
        self._point(self.current_link, version)
        return old

    def restore_links(self, current: str | None, previous: str | None) -> None:
        """Put both links back as they were (a failed switch)."""
        for link, version in ((self.current_link, current), (self.previous_link, previous)):
            if version is None:
                link.unlink(missing_ok=True)
            else:
                self._point(link, version)

    def prune(self, keep: int) -> list[str]:
        """Remove the oldest releases beyond `keep`; never current or previous."""
        protected = {self.current(), self.previous()}
        versions = self.installed()
        removable = [v for v in versions if v not in protected]
        excess = len(versions) - max(keep, 2)
        removed = []
        for version in removable:
            if excess <= 0:
                break
            shutil.rmtree(self.dir / version)
            removed.append(version)
            excess -= 1
        return removed
