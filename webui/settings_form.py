"""The configuration page's model, derived from the schema (no Flask here).

`sections()` walks `Config`: every nested settings model becomes a section with its
fields, each with its help text, kind of input and whether it may be edited here.
`parse_section()` turns a submitted form into values, with an error per field, and
`plan_change()` computes the new overrides document for the fields a section changed:
a value equal to the base file's (or the default) removes its override, and the merged
result is validated exactly as the proxy will load it.
"""

from __future__ import annotations

import copy
import enum
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ValidationError

from appliance.config.loader import deep_merge
from appliance.config.schema import Config

# Not editable in the UI: the data directory locates the overrides file itself, and the
# web UI's own listener, certificate and login rules could lock every administrator out.
READONLY_PREFIXES: tuple[str, ...] = ("data_dir", "webui")
GENERAL = "general"
TITLES = {
    GENERAL: "General",
    "listen": "Listeners",
    "downstream": "Downstream (Postfix)",
    "limits": "Limits",
    "smtp": "SMTP",
    "tls": "TLS (STARTTLS)",
    "scoring": "Scoring",
    "scoring.thresholds": "Scoring thresholds",
    "autowhitelist": "Autowhitelist",
    "store": "Kept mail",
    "metrics": "Metrics",
    "dns": "DNS",
    "webui": "Web UI",
}

Kind = Literal["bool", "int", "float", "str", "path", "choice", "lines", "yaml"]


@dataclass(frozen=True)
class FieldSpec:
    path: str  # dotted key, e.g. "scoring.thresholds.tag"
    name: str
    kind: Kind
    description: str
    optional: bool
    choices: tuple[str, ...] = ()
    readonly: bool = False

    @property
    def label(self) -> str:
        return self.name.replace("_", " ")


@dataclass(frozen=True)
class SectionSpec:
    key: str  # "general", "limits", "filters.regex", "scoring.thresholds"
    title: str
    description: str
    fields: tuple[FieldSpec, ...]

    @property
    def readonly(self) -> bool:
        return all(f.readonly for f in self.fields)


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def _kind(annotation: Any) -> tuple[Kind, tuple[str, ...]]:
    origin = typing.get_origin(annotation)
    if annotation is bool:
        return "bool", ()
    if annotation is int:
        return "int", ()
    if annotation is float:
        return "float", ()
    if annotation is str:
        return "str", ()
    if annotation is Path:
        return "path", ()
    if origin is Literal:
        return "choice", tuple(str(a) for a in typing.get_args(annotation))
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "choice", tuple(str(m.value) for m in annotation)
    if origin is list and typing.get_args(annotation) == (str,):
        return "lines", ()
    return "yaml", ()


def _title(key: str) -> str:
    if key in TITLES:
        return TITLES[key]
    if key.startswith("filters."):
        return "Filter: " + key.split(".", 1)[1].replace("_", " ")
    return key.replace("_", " ").replace(".", " / ").capitalize()


def _readonly(path: str) -> bool:
    return any(path == p or path.startswith(p + ".") for p in READONLY_PREFIXES)


def sections(model: type[BaseModel] = Config) -> list[SectionSpec]:
    found: list[SectionSpec] = []
    general: list[FieldSpec] = []
    _walk(model, "", general, found)
    if general:
        found.insert(0, SectionSpec(GENERAL, TITLES[GENERAL], "", tuple(general)))
    return found


def _walk(model: type[BaseModel], prefix: str, own: list[FieldSpec],
          found: list[SectionSpec]) -> None:
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        annotation, optional = _unwrap_optional(info.annotation)
        if _is_model(annotation) and not optional:
            fields: list[FieldSpec] = []
            position = len(found)
            _walk(annotation, path + ".", fields, found)
            if fields:
                doc = (annotation.__doc__ or "").strip()
                if doc.startswith(("A base class", "!!!")) or doc == (BaseModel.__doc__ or ""):
                    doc = ""
                found.insert(position, SectionSpec(path, _title(path), " ".join(doc.split()),
                                                   tuple(fields)))
            continue
        kind, choices = _kind(annotation)
        own.append(FieldSpec(
            path=path,
            name=name,
            kind=kind,
            description=info.description or "",
            optional=optional,
            choices=choices,
            readonly=_readonly(path),
        ))


def section(key: str) -> SectionSpec | None:
    return next((s for s in sections() if s.key == key), None)


# -- values ---------------------------------------------------------------------------


_MISSING = object()


def get_path(doc: Mapping[str, Any], path: str, default: Any = _MISSING) -> Any:
    node: Any = doc
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            if default is _MISSING:
                raise KeyError(path)
            return default
        node = node[part]
    return node


def set_path(doc: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    node = doc
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def remove_path(doc: dict[str, Any], path: str) -> bool:
    """Delete `path` and the mappings it leaves empty; False if it was not there."""
    parts = path.split(".")
    trail: list[tuple[dict[str, Any], str]] = []
    node: Any = doc
    for part in parts[:-1]:
        if not isinstance(node, dict) or part not in node:
            return False
        trail.append((node, part))
        node = node[part]
    if not isinstance(node, dict) or parts[-1] not in node:
        return False
    del node[parts[-1]]
    for parent, key in reversed(trail):
        if parent[key] == {}:
            del parent[key]
    return True


def display_value(spec: FieldSpec, value: Any) -> Any:
    """What the input shows for `value` (JSON-mode, as `model_dump(mode="json")` gives)."""
    if spec.kind == "bool":
        return bool(value)
    if value is None:
        return ""
    if spec.kind == "lines":
        return "\n".join(str(v) for v in value)
    if spec.kind == "yaml":
        if value in ({}, []):
            return ""
        return yaml.safe_dump(value, sort_keys=False, default_flow_style=False,
                              allow_unicode=True).rstrip()
    if spec.kind == "float" and isinstance(value, float) and value.is_integer():
        return str(int(value)) if abs(value) < 1e15 else str(value)
    return str(value)


def source_of(provenance: Mapping[str, str], path: str) -> str:
    """"override", "base" or "default": where the effective value of `path` comes from
    (for a mapping, the strongest source among its keys)."""
    sources = {
        origin for key, origin in provenance.items()
        if key == path or key.startswith(path + ".")
    }
    for origin in ("override", "base"):
        if origin in sources:
            return origin
    return "default"


# -- a submitted section --------------------------------------------------------------


@dataclass
class ParsedSection:
    values: dict[str, Any] = field(default_factory=dict)  # path -> JSON-mode value
    errors: dict[str, str] = field(default_factory=dict)  # path -> message
    raw: dict[str, str] = field(default_factory=dict)  # path -> what was typed


def parse_section(spec: SectionSpec, form: Mapping[str, str], current: Mapping[str, Any]
                  ) -> ParsedSection:
    """Read the editable fields of `spec` from a submitted `form` (a missing checkbox is
    False); `current` is the effective document, whose value a field keeps if the form
    does not carry it at all (never silently reset what was not shown)."""
    result = ParsedSection()
    for f in spec.fields:
        if f.readonly:
            continue
        if f.kind == "bool":
            if f.path + "._present" not in form and f.path not in form:
                continue
            result.values[f.path] = form.get(f.path) in ("on", "true", "1", "yes")
            continue
        if f.path not in form:
            continue
        raw = form[f.path]
        result.raw[f.path] = raw
        try:
            result.values[f.path] = parse_value(f, raw, get_path(current, f.path, None))
        except ValueError as exc:
            result.errors[f.path] = str(exc)
    return result


def parse_value(spec: FieldSpec, raw: str, current: Any = None) -> Any:
    text = raw.strip()
    if spec.kind in ("int", "float", "str", "path", "choice") and text == "":
        if spec.optional:
            return None
        if spec.kind == "str":
            return ""
        raise ValueError("a value is required")
    if spec.kind == "int":
        try:
            return int(text)
        except ValueError:
            raise ValueError("must be a whole number") from None
    if spec.kind == "float":
        try:
            value = float(text)
        except ValueError:
            raise ValueError("must be a number") from None
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value
    if spec.kind == "choice":
        if text not in spec.choices:
            raise ValueError(f"choose one of: {', '.join(spec.choices)}")
        return text
    if spec.kind == "str":
        if "\n" in raw or "\r" in raw:
            raise ValueError("must be a single line")
        return raw.strip()
    if spec.kind == "path":
        return text
    if spec.kind == "lines":
        return [line.strip() for line in raw.splitlines() if line.strip()]
    # yaml: lists of patterns, symbol weights and the like
    if text == "":
        return [] if isinstance(current, list) else {}
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "cannot be read"
        raise ValueError(f"invalid YAML{where}: {problem}") from None
    if value is None:
        return [] if isinstance(current, list) else {}
    return value


# -- turning values into an overrides document ----------------------------------------


@dataclass
class Plan:
    overrides: dict[str, Any]  # the complete new overrides document
    changes: list[tuple[str, Any, Any]]  # (path, old effective, new effective)
    errors: dict[str, str] = field(default_factory=dict)  # path ("" = whole section)
    config: Config | None = None  # the validated result


def effective_document(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    return Config.model_validate(deep_merge(base, overrides)).model_dump(mode="json")


def plan_change(
    base: Mapping[str, Any],
    overrides: Mapping[str, Any],
    values: Mapping[str, Any],
    fields: list[FieldSpec],
) -> Plan:
    """The overrides document that gives `values` (path -> value), validated as merged."""
    known = {f.path: f for f in fields}
    without = Config.model_validate(dict(base)).model_dump(mode="json")  # base + defaults
    before = effective_document(base, overrides)
    new = copy.deepcopy(dict(overrides))
    for path, value in values.items():
        if path not in known or known[path].readonly:
            raise ValueError(f"{path} cannot be changed here")
        if _same(get_path(without, path, None), value):
            remove_path(new, path)
        else:
            set_path(new, path, value)
    plan = Plan(new, [])
    try:
        config = Config.model_validate(deep_merge(base, new))
    except ValidationError as exc:
        for error in exc.errors():
            location = ".".join(str(p) for p in error["loc"])
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = f"unknown setting {location}"
            target = _field_for(location, known)
            plan.errors.setdefault(target, message)
        return plan
    after = config.model_dump(mode="json")
    for path, value in values.items():
        if not _same(get_path(after, path, None), value):
            plan.errors[path] = (
                "cannot remove entries the base file sets here; give them a value instead, "
                "or change the base file"
            )
    if plan.errors:
        return plan
    plan.config = config
    for path in known:
        old, now = get_path(before, path, None), get_path(after, path, None)
        if not _same(old, now):
            plan.changes.append((path, old, now))
    return plan


def plan_reset(base: Mapping[str, Any], overrides: Mapping[str, Any], path: str) -> Plan:
    """Remove the override of `path` (and below): the base file's value applies again."""
    new = copy.deepcopy(dict(overrides))
    if not remove_path(new, path):
        return Plan(new, [], {path: "nothing to reset: this setting has no override"})
    before = effective_document(base, overrides)
    plan = Plan(new, [])
    try:
        config = Config.model_validate(deep_merge(base, new))
    except ValidationError as exc:
        messages = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        plan.errors[path] = f"the base value would be invalid together with the rest: {messages}"
        return plan
    plan.config = config
    after = config.model_dump(mode="json")
    old, now = get_path(before, path, None), get_path(after, path, None)
    if not _same(old, now):
        plan.changes.append((path, old, now))
    return plan


def _field_for(location: str, known: Mapping[str, FieldSpec]) -> str:
    """The field an error location belongs to (a list item's error goes to its list;
    a model-level error, such as the order of thresholds, to the section)."""
    best = ""
    for path in known:
        if (location == path or location.startswith(path + ".")) and len(path) > len(best):
            best = path
    return best


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool) \
            and not isinstance(b, bool):
        return float(a) == float(b)
    return bool(a == b)


def show(value: Any) -> str:
    """A short text of a value for the audit log and messages."""
    if value is None:
        return "(empty)"
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int | float):
        return f"{value:g}" if isinstance(value, float) else str(value)
    return yaml.safe_dump(value, default_flow_style=True, sort_keys=False,
                          allow_unicode=True).strip()
