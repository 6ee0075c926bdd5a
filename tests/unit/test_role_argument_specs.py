"""Each Ansible role's meta/argument_specs.yml documents exactly the variables in its
defaults/main.yml, with the same defaults: the spec is what `ansible-doc` and the
role's argument validation show, defaults/main.yml is what Ansible actually uses."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROLES_DIR = Path(__file__).resolve().parents[2] / "roles"
ROLES = sorted(path.name for path in ROLES_DIR.iterdir() if (path / "meta").is_dir())


def load(path: Path) -> dict:
    with path.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle) or {}


def entry_points(role: str) -> dict[str, dict]:
    specs = load(ROLES_DIR / role / "meta" / "argument_specs.yml")["argument_specs"]
    return {name: spec.get("options", {}) for name, spec in specs.items()}


def test_every_role_is_checked() -> None:
    assert {"postfix", "clamav", "postwall", "webui", "backup"} <= set(ROLES)


@pytest.mark.parametrize("role", ROLES)
def test_spec_defaults_equal_role_defaults(role: str) -> None:
    defaults = load(ROLES_DIR / role / "defaults" / "main.yml")
    for entry_point, options in entry_points(role).items():
        where = f"{role} {entry_point}"
        undocumented = sorted(set(defaults) - set(options))
        assert not undocumented, f"{where}: not in the spec: {undocumented}"
        for name, option in options.items():
            if option.get("required"):
                assert "default" not in option, f"{where}: {name} is required and has a default"
                assert name not in defaults, f"{where}: required {name} is in defaults/main.yml"
                continue
            assert name in defaults, f"{where}: {name} is optional but not in defaults/main.yml"
            assert "default" in option, f"{where}: {name} is optional but its spec has no default"
            assert option["default"] == defaults[name], (
                f"{where}: {name} defaults to {defaults[name]!r} in defaults/main.yml "
                f"but to {option['default']!r} in meta/argument_specs.yml"
            )


@pytest.mark.parametrize("role", ROLES)
def test_variables_carry_the_role_prefix(role: str) -> None:
    for entry_point, options in entry_points(role).items():
        strays = sorted(name for name in options if not name.startswith(f"{role}__"))
        assert not strays, f"{role} {entry_point}: not named {role}__*: {strays}"


@pytest.mark.parametrize("role", ROLES)
def test_validate_entry_point_takes_the_same_variables(role: str) -> None:
    points = entry_points(role)
    if "validate" in points:
        assert points["validate"] == points["main"]
