"""Named label sets: how each corpus's labels map to the classes a model predicts.

A label set maps an original corpus label to a class name, or to None when the label is
known but left out of this task (e.g. RAVDESS 'calm' in `ravdess4`). A label the set does
not know at all is an error that lists the known ones.

A set is a built-in name (`LABEL_SETS`), a YAML file `{name, classes, map}`
(`read_label_set`), a class list with an optional map written in the config
(`custom_label_set`), or `auto`: the classes the training data holds (`auto_label_set`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from emofuse.errors import LabelError


@dataclass(frozen=True)
class LabelSet:
    name: str
    classes: tuple[str, ...]
    mapping: dict  # original label (lower case) -> class name or None (excluded)

    def map(self, original: str, source: str | None = None) -> str | None:
        key = str(original).strip().lower()
        if key not in self.mapping:
            where = f"{source}: " if source else ""
            raise LabelError(
                f"{where}unknown label {original!r} for label set {self.name!r}; "
                f"known labels: {', '.join(sorted(self.mapping))}"
            )
        return self.mapping[key]

    def index(self, label: str) -> int:
        return self.classes.index(label)


def _identity(name: str, classes: tuple[str, ...], excluded: tuple[str, ...] = (), **aliases: str) -> LabelSet:
    mapping: dict = {c: c for c in classes}
    mapping.update({e: None for e in excluded})
    mapping.update(aliases)
    return LabelSet(name, classes, mapping)


RAVDESS_EMOTIONS = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")

LABEL_SETS: dict[str, LabelSet] = {
    # IEMOCAP: excited is merged into happy (Aguilar et al. 2019; 5,531 utterances).
    "iemocap4": LabelSet(
        "iemocap4",
        ("angry", "happy", "neutral", "sad"),
        {
            "ang": "angry", "angry": "angry",
            "hap": "happy", "happy": "happy", "exc": "happy", "excited": "happy",
            "neu": "neutral", "neutral": "neutral",
            "sad": "sad",
            "fru": None, "sur": None, "fea": None, "dis": None, "oth": None, "xxx": None,
            "frustrated": None, "surprised": None, "fearful": None, "disgusted": None, "other": None,
        },
    ),
    "ravdess4": _identity(
        "ravdess4", ("angry", "happy", "neutral", "sad"),
        excluded=("calm", "fearful", "disgust", "surprised"),
    ),
    "ravdess8": _identity("ravdess8", RAVDESS_EMOTIONS),
    "mosei6": _identity("mosei6", ("happy", "sad", "angry", "surprise", "disgust", "fear")),
    "meld7": _identity("meld7", ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise")),
}


def _known_names() -> str:
    return ", ".join(LABEL_SETS)


def get_label_set(name: str) -> LabelSet:
    """A built-in set by name, or a YAML label-set file (`*.yaml` / `*.yml`, see `read_label_set`)."""
    if name in LABEL_SETS:
        return LABEL_SETS[name]
    if is_label_set_file(name):
        return read_label_set(name)
    raise LabelError(f"unknown label set {name!r}; known: {_known_names()}, auto, or a YAML file "
                     "{name, classes, map}")


def is_label_set_file(name: str | None) -> bool:
    return isinstance(name, str) and name.lower().endswith((".yaml", ".yml"))


def custom_label_set(name: str, classes, label_map: dict | None = None, source: str = "data.classes") -> LabelSet:
    """A label set from a class list and an optional map {original label: class or null}.

    Every class maps to itself; `label_map` adds aliases (exc -> happy) and exclusions
    (fru -> null). A map target that is not a class is an error naming it and `source`."""
    if not isinstance(classes, (list, tuple)) or not classes:
        raise LabelError(f"{source}: 'classes' must be a non-empty list of class names, got {classes!r}")
    names = [str(c).strip().lower() for c in classes]
    if any(not c for c in names):
        raise LabelError(f"{source}: empty class name in {list(classes)!r}")
    dupes = sorted({c for c in names if names.count(c) > 1})
    if dupes:
        raise LabelError(f"{source}: class(es) {', '.join(dupes)} listed twice")
    mapping: dict = {c: c for c in names}
    if label_map is not None:
        if not isinstance(label_map, dict):
            raise LabelError(f"{source}: 'map' must be a mapping {{original label: class or null}}, got {label_map!r}")
        for original, target in label_map.items():
            key = str(original).strip().lower()
            if target is None:
                mapping[key] = None
                continue
            target = str(target).strip().lower()
            if target not in mapping or mapping.get(target) != target:
                raise LabelError(f"{source}: label {original!r} maps to {target!r}, which is not a class; "
                                 f"known classes: {', '.join(names)}")
            mapping[key] = target
    return LabelSet(str(name), tuple(names), mapping)


def read_label_set(path: str | Path) -> LabelSet:
    """A label-set YAML file: `{name: ..., classes: [...], map: {original: class or null}}`."""
    import yaml  # the corpus stage reads YAML only here

    path = Path(path)
    if not path.is_file():
        raise LabelError(f"{path}: label-set file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise LabelError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(raw, dict):
        raise LabelError(f"{path}: a label-set file is a mapping {{name, classes, map}}, got {type(raw).__name__}")
    unknown = sorted(set(raw) - {"name", "classes", "map"})
    if unknown:
        raise LabelError(f"{path}: unknown key(s) {unknown}; a label-set file has name, classes, map")
    return custom_label_set(raw.get("name") or path.stem, raw.get("classes"), raw.get("map"), source=str(path))


@dataclass(frozen=True)
class AutoLabels:
    """What `auto_label_set` decided: the set, and the classes dropped as too rare (name -> count)."""

    label_set: LabelSet
    dropped: dict


def auto_label_set(labels, min_count: int = 10, source: str = "the training data") -> AutoLabels:
    """The classes present in `labels`, sorted; those with fewer than `min_count` utterances
    are dropped (mapped to None) and returned in `dropped`."""
    counts: dict = {}
    for label in labels:
        key = str(label).strip().lower()
        counts[key] = counts.get(key, 0) + 1
    kept = sorted(c for c, n in counts.items() if n >= min_count)
    dropped = {c: n for c, n in sorted(counts.items()) if n < min_count}
    if not kept:
        raise LabelError(f"{source}: label set auto: no class has {min_count} or more utterances "
                         f"(data.min_class_count); counts: {', '.join(f'{c} {n}' for c, n in sorted(counts.items()))}")
    mapping: dict = {c: c for c in kept}
    mapping.update({c: None for c in dropped})
    return AutoLabels(LabelSet("auto", tuple(kept), mapping), dropped)


def describe(label_set: LabelSet) -> dict:
    """The resolved set as data: what the run directory keeps (`data.json`)."""
    return {"name": label_set.name, "classes": list(label_set.classes),
            "map": {k: v for k, v in sorted(label_set.mapping.items()) if v != k}}
