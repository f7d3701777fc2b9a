"""Experiment configs: YAML files under `configs/<corpus>/<name>.yaml`, checked before any work.

A config names the data (manifest or corpus folder, label set, features, alignment), the
model (a registry name plus its settings), the optimiser, the trainer, the fold protocol and
the seed; `emofuse.training.schema` declares every key. A config may start from base files,
`defaults: [../_base.yaml]` (relative to itself, merged in order, the config over them).
Any key can be overridden as a dotted `key=value` (`trainer.max_epochs=1 model.dropout=0.4
run_dir=/tmp/x`): the value is read as YAML unless the key holds a string, so
`model.teacher_checkpoint=DIR/fold-{fold}` stays that text.

The types are pydantic's (lax mode: it coerces "64", "1e-4" and "false" and reports every
refusal with its key), chosen over OmegaConf because pydantic is already installed with FastAPI,
validates `int | str` and `bool | str` keys (`trainer.devices`, `data.normalise`) and each
model's own config dataclass as they are, and its errors carry the key for a one-line message;
OmegaConf's interpolation would read the `${VAR:-default}` paths our configs and users' configs
already hold as a resolver call, so they would all need rewriting. Merging the defaults and
setting dotted keys are a dozen lines each here.

Everything that can be checked without data is checked in `load_config`: an unknown section,
key, model name, model setting, label set, optimiser or protocol is a one-line ConfigError
naming the key, the file it came from, and the valid choices. `to_dict` gives the resolved
config, flat of any defaults, that the run directory keeps as `config.yaml`. configs/README.md
lists every key; `python -m emofuse.training.config --readme` regenerates its tables.
"""

from __future__ import annotations

import copy
import os
import re
import types
import typing
from dataclasses import fields
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import ConfigDict, TypeAdapter, ValidationError

from emofuse.corpora.labels import is_label_set_file
from emofuse.errors import ConfigError
from emofuse.io import atomic_write_text
from emofuse.training.schema import (  # noqa: F401  (the schema's names are this module's API too)
    RESUMABLE_KEYS, SECTIONS, TOP_LEVEL, AugmentConfig, DataConfig, ExperimentConfig, OptimConfig, ProtocolConfig,
    TrainerConfig, check_model_ranges, type_of, update_readme, validate, validate_fitted, validate_labels,
)

# Path values may name environment variables: ${EMOFUSE_DATA:-../shared/data}/ravdess.
PATH_KEYS = ("manifest", "path", "store", "test_manifest", "test_store")
COMMAND_LINE = "the command line"


# ---------------------------------------------------------------------------------------
# Loading


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = (), *, raw: dict | None = None
                ) -> ExperimentConfig:
    """Read a YAML config (or `raw`) over its defaults, apply dotted overrides, validate everything checkable.

    `name` defaults to the file's stem and `corpus` to its folder's name, so
    `configs/ravdess4/b-aco-1.yaml` runs in `runs/ravdess4/b-aco-1` unless told otherwise.
    """
    origins: dict[str, str] = {}
    if raw is None:
        if path is None:
            raise ConfigError("no config file given")
        path = Path(path)
        raw, origins = read_config(path)
        raw = {"name": path.stem, "corpus": path.parent.name, **raw}
    else:
        raw = copy.deepcopy(raw)
    for item in overrides:
        apply_override(raw, item, origins)
    return build_config(raw, source=str(path) if path else "<config>", origins=origins)


def read_config(path: Path, _inside: tuple[Path, ...] = ()) -> tuple[dict, dict[str, str]]:
    """The mapping in `path` merged over the base files its `defaults:` names (relative to it, in
    order, each over its own defaults), and the file each dotted key came from."""
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found" + (f" (a default of {_inside[-1]})" if _inside else ""))
    if path.resolve() in _inside:
        raise ConfigError(f"{path}: its defaults lead back to it ({' -> '.join(str(p) for p in (*_inside, path))})")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config is a mapping of sections, got {type(raw).__name__}")
    bases = raw.pop("defaults", None) or []
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: defaults={bases!r}; give a base file or a list of them, relative to this file")
    merged: dict = {}
    origins: dict[str, str] = {}
    for base in bases:
        values, where = read_config(path.parent / base, (*_inside, path.resolve()))
        merge(merged, values)
        origins.update(where)
    raw = {k: v for k, v in raw.items() if not (k in SECTIONS and v is None)}  # an empty `optim:` adds nothing
    merge(merged, raw)
    origins.update(dict.fromkeys(_dotted_keys(raw), str(path)))
    return merged, origins


def merge(into: dict, over: dict) -> dict:
    """`over` merged into `into`: mappings key by key, anything else (lists too) replaced."""
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)
    return into


def _dotted_keys(d: dict, prefix: str = ""):
    for key, value in d.items():
        yield f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _dotted_keys(value, f"{prefix}{key}.")


def apply_override(raw: dict, item: str, origins: dict[str, str] | None = None) -> None:
    """Set `section.key=value` (or `key=value`) in a raw config dict; the value stays text until
    `build_config` reads it as its key's type wants."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not key=value (e.g. trainer.max_epochs=1)")
    key, value = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {item!r}: empty key")
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = _Override(value)
    if origins is not None:  # the key, and a section the command line brought in
        origins[".".join(parts)] = COMMAND_LINE
        for n in range(1, len(parts)):
            origins.setdefault(".".join(parts[:n]), COMMAND_LINE)


class _Override(str):
    """A command-line value, read by `_read_override` as its key's type wants."""


def _read_override(text: str, tp: Any) -> Any:
    """Kept as written where the key takes a string (`run_dir=runs/x/fold-{fold}`), `null`
    clearing an optional one; otherwise read as YAML (`[64, 128]`, `{a: b}`, `5e-4`, `true`)."""
    # the alternatives of `str | None`; a container's arguments (`dict[str, Any]`) are not alternatives
    args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    if type(None) in args and text.strip().lower() in ("null", "none", "~", ""):
        return None
    if str in args:
        return str(text)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return str(text)


def _read_overrides(values: dict, cls: type) -> dict:
    hints = typing.get_type_hints(cls)
    return {k: _read_override(v, hints[k]) if isinstance(v, _Override) and k in hints else v for k, v in values.items()}


def build_config(raw: dict, source: str = "<config>", origins: dict[str, str] | None = None) -> ExperimentConfig:
    """The validated config of a raw mapping (a composed file plus overrides). `origins` (dotted
    key -> file or the command line) names where a refused key was set."""
    try:
        if "model" not in raw or not isinstance(raw["model"], dict) or "name" not in raw["model"]:
            raise KeyRefused("model", "the config needs a model section with a name (e.g. model: {name: B-ACO-1})")
        values = _read_overrides({k: v for k, v in raw.items() if k != "model"}, ExperimentConfig)
        for section, cls in SECTIONS.items():
            if isinstance(values.get(section) or {}, dict):
                values[section] = _read_overrides(values.get(section) or {}, cls)
        try:
            cfg = TypeAdapter(ExperimentConfig).validate_python(values)
        except ValidationError as exc:
            raise _refusal(exc) from None
        d = cfg.data
        for key in PATH_KEYS:
            if getattr(d, key) is not None:
                setattr(d, key, expand_path(getattr(d, key)))
        if is_label_set_file(d.label_set):
            d.label_set = expand_path(d.label_set)
        if d.classes is not None and "label_set" not in (raw.get("data") or {}):
            d.label_set = None  # the inline classes are the set; the default name would mislead
        cfg.model = validate_model(raw["model"])
        validate(cfg)
    except ConfigError as exc:
        raise ConfigError(_where(getattr(exc, "key", ""), source, origins or {}) + str(exc)) from None
    return cfg


class KeyRefused(ConfigError):
    """A refused key: `build_config` starts its line with the file that set the key."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def _where(key: str, source: str, origins: dict[str, str]) -> str:
    """The file (or the command line) that set `key` or its section, as a refusal's first words."""
    parts = key.split(".")
    found = next((origins[k] for k in (".".join(parts[:n]) for n in range(len(parts), 0, -1)) if k in origins),
                 source)
    if found == COMMAND_LINE:
        return "on the command line: " if source == "<config>" else f"{source}, on the command line: "
    return "" if found == "<config>" else f"{found}: "


_EXPECTED = {"int": "an integer", "float": "a number", "bool": "true or false", "string": "a string",
             "list": "a list like [1, 2]", "tuple": "a list like [1, 2]", "dict": "a mapping",
             "dataclass": "a mapping"}


def _refusal(exc: ValidationError, prefix: tuple = ()) -> KeyRefused:
    """One line for a pydantic refusal: the key, the value, what was expected."""
    errors = exc.errors()
    key = _key((*prefix, *errors[0]["loc"]))
    if errors[0]["type"] == "unexpected_keyword_argument":
        section = key.split(".")[0] if "." in key else ""
        valid = ", ".join(f.name for f in fields(SECTIONS[section] if section else ExperimentConfig))
        return KeyRefused(key, f"unknown config key {key!r}; valid{f' {section}' if section else ''} keys: {valid}")
    expected = list(dict.fromkeys(
        _EXPECTED.get(e["type"].split("_")[0], e["msg"]) for e in errors if _key((*prefix, *e["loc"])) == key))
    return KeyRefused(key, f"{key}={errors[0]['input']!r}: expected {' or '.join(expected)}")


def _key(loc: tuple) -> str:
    """`data.classes[1]` from pydantic's location ('data', 'classes', 1, 'str'): the field, then
    list indices; a union member's tag after them is not part of the key."""
    top = 2 if loc[0] in SECTIONS or loc[0] == "model" else 1
    key = ".".join(str(p) for p in loc[:top])
    return key + "".join(f"[{p}]" for p in loc[top:] if isinstance(p, int))


@lru_cache(maxsize=None)
def _adapter(tp: Any) -> TypeAdapter:
    return TypeAdapter(tp, config=ConfigDict(coerce_numbers_to_str=True))


def validate_model(section: dict) -> dict:
    """The model section: a registered name and settings its config dataclass accepts."""
    from emofuse.models.base import get_model  # the registry lists the known models in its error

    entry = get_model(str(section["name"]))
    cls = entry.config_cls
    valid = [f.name for f in fields(cls)]
    settings = {k: v for k, v in section.items() if k != "name"}
    unknown = sorted(set(settings) - set(valid))
    if unknown:
        raise KeyRefused(f"model.{unknown[0]}", f"model {entry.name!r}: unknown setting(s) "
                         f"{', '.join(f'model.{k}' for k in unknown)}; valid: {', '.join(valid)}")
    resolved = {"name": entry.name}
    for key, value in _read_overrides(settings, cls).items():
        try:
            resolved[key] = _adapter(type_of(cls, key)).validate_python(value)
        except ValidationError as exc:
            raise _refusal(exc, ("model", key)) from None
    check_model_ranges(entry, resolved)
    try:
        cls(**{**entry.defaults, **{k: v for k, v in resolved.items() if k != "name"}})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model {entry.name!r}: invalid settings ({exc})") from exc
    return resolved


def expand_path(value: str) -> str:
    """Expand ${VAR}, ${VAR:-default} and ~ in a path value; an unset ${VAR} without default is an error."""

    def substitute(match: re.Match) -> str:
        name, default = match.group(1), match.group(3)
        if name in os.environ and os.environ[name] != "":
            return os.environ[name]
        if default is not None:
            return default
        raise ConfigError(f"{value!r}: environment variable {name} is not set (write ${{{name}:-default}})")

    return os.path.expanduser(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}", substitute, value))



# ---------------------------------------------------------------------------------------
# The resolved config in the run directory


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_differences(a: dict, b: dict) -> list[str]:
    """Keys (dotted) whose values differ between two resolved configs."""
    fa, fb = flatten(a), flatten(b)
    return sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k))


def save_config(cfg: ExperimentConfig, run_dir: Path, write: bool = True) -> Path:
    """Write `run_dir/config.yaml` atomically (`write=False`: only check, write nothing).
    A run directory that already holds a different config (other than where/how fast it runs)
    is refused: its folds would mix two experiments.
    A folder holding nothing but its config.yaml (a start that failed before any fold, e.g. on a
    missing feature) has no results to mix, so a corrected config replaces it."""
    path = run_dir / "config.yaml"
    check_run_dir(run_dir)
    resolved = cfg.to_dict()
    if path.is_file() and any(not _config_only(entry.name) for entry in run_dir.iterdir()):
        previous = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        # A key added to the schema after that run started (absent there) still at its default is no change.
        defaults, before = flatten(ExperimentConfig().to_dict()), flatten(previous)
        now = flatten(resolved)
        changed = [k for k in config_differences(previous, resolved) if k not in RESUMABLE_KEYS
                   and not (k not in before and k in defaults and now.get(k) == defaults[k])]
        if changed:
            raise ConfigError(
                f"{path}: this run directory holds a run with a different config "
                f"({', '.join(changed)}); use another run_dir=... or delete the folder"
            )
    if write:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, yaml.safe_dump(resolved, sort_keys=False))
    return path


def check_run_dir(run_dir: Path) -> None:
    """`run_dir` is a folder or can become one: a file there (or above it) is one ConfigError."""
    from emofuse.io import file_in_the_way

    blocker = file_in_the_way(run_dir)
    if blocker is not None:
        raise ConfigError(f"run_dir={run_dir}: {'is a file' if blocker == run_dir else f'{blocker} is a file'}, "
                          "not a run directory")


def _config_only(name: str) -> bool:
    """config.yaml itself, or a stray temporary file of an interrupted write of it (emofuse/io.py)."""
    return name == "config.yaml" or (name.startswith(".config.yaml.") and name.endswith(".tmp"))


# ---------------------------------------------------------------------------------------
# configs/README.md


def main(argv: list[str] | None = None) -> None:
    """`python -m emofuse.training.config --readme [PATH]`: rewrite the key tables of PATH
    (configs/README.md) from the schema."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m emofuse.training.config", description=main.__doc__)
    parser.add_argument("--readme", metavar="PATH", nargs="?", const="configs/README.md", required=True,
                        help="the README whose key tables to regenerate (default: configs/README.md)")
    path = Path(parser.parse_args(argv).readme)
    text = path.read_text(encoding="utf-8")
    updated = update_readme(text)
    if updated != text:
        atomic_write_text(path, updated)
    print(f"{path}: {'tables regenerated' if updated != text else 'already up to date'}")


if __name__ == "__main__":
    main()
