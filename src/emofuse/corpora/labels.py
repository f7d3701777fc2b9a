"""Named label sets: how each corpus's labels map to the classes a model predicts.

A label set maps an original corpus label to a class name, or to None when the label is
known but left out of this task (e.g. RAVDESS 'calm' in `ravdess4`). A label the set does
not know at all is an error that lists the known ones.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def get_label_set(name: str) -> LabelSet:
    try:
        return LABEL_SETS[name]
    except KeyError:
        raise LabelError(f"unknown label set {name!r}; known: {', '.join(LABEL_SETS)}") from None
