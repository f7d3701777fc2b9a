"""What a run checks about its data before training, kept in `run_dir/data.json` and shown in
report.md: the resolved label set, the corpora (train -> test for the cross-corpus protocol),
classes missing from a test corpus, and whether per-speaker statistics are safe.

Per-speaker normalisation (`data.normalise: speaker`, `protocol.backend: speaker-lr`)
z-scores each speaker with their own utterances. That assumes every speaker shows several
emotions; a speaker heard in one emotion only has that emotion removed with their mean.
`SINGLE_CLASS_LIMIT` is the share of single-class speakers in a training part above which
the run warns; it comes from benchmarks/single_class_speakers.py (see that file and
benchmarks/results/single_class_speakers.md for how it was chosen).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from emofuse.io import write_json

# Share of a training part's speakers heard in one class only above which speaker statistics
# are unsafe. Measured (benchmarks/results/single_class_speakers.md, RAVDESS4, fbank40 statistics,
# linear model): speaker normalisation leads fold normalisation up to a third of single-class
# actors (UA 0.608 vs 0.590), ties it at a half (0.596 vs 0.598) and falls 13 points below it at
# two thirds (0.467 vs 0.596), reaching chance (0.250) at all of them: warn above a half.
SINGLE_CLASS_LIMIT = 0.5


def single_class_share(speakers: Sequence[str], labels: Sequence) -> tuple[float, int, int]:
    """(share, single-class speakers, speakers) over the given utterances."""
    classes_of: dict = defaultdict(set)
    for s, y in zip(speakers, labels):
        classes_of[s].add(y)
    single = sum(len(c) == 1 for c in classes_of.values())
    return (single / len(classes_of) if classes_of else 0.0), single, len(classes_of)


def uses_speaker_statistics(config: dict) -> list[str]:
    """The settings of a resolved config that z-score per speaker."""
    from emofuse.features.normalise import Normalisation

    d, p = config.get("data", {}), config.get("protocol", {})
    used = []
    if d.get("acoustic") and Normalisation.mode_of(d.get("normalise", True)) == "speaker":
        used.append("data.normalise=speaker")
    if p.get("backend") == "speaker-lr":
        used.append("protocol.backend=speaker-lr")
    return used


def single_class_warning(config: dict, speakers: Sequence[str], labels: Sequence,
                         limit: float = SINGLE_CLASS_LIMIT) -> str | None:
    """A warning when the run z-scores per speaker and too many training speakers show one class."""
    used = uses_speaker_statistics(config)
    share, single, total = single_class_share(speakers, labels)
    if not used or share <= limit:
        return None
    return (f"{single} of {total} training speakers ({100 * share:.0f}%) are heard in one class only, above the "
            f"{100 * limit:.0f}% at which per-speaker statistics become unsafe ({', '.join(used)}): z-scoring such a "
            "speaker removes their emotion with their mean. Use data.normalise=fold and protocol.backend=lr "
            "(configs/README.md, 'When is each normalisation safe').")


def data_checks(config: dict, data, folds: list) -> dict:
    """The checks of `data` (a LabelledData) under the run's folds: what data.json holds."""
    info = dict(getattr(data, "label_info", {}) or {})
    warnings: list[str] = list(info.get("notes", []))
    corpora = dict(info.get("corpora") or {})
    result: dict = {"label_set": info.get("label_set") or {"name": config.get("data", {}).get("label_set"),
                                                           "classes": list(data.classes)},
                    "corpora": corpora}
    train_idx = np.unique(np.concatenate([np.asarray(f.train, dtype=np.int64) for f in folds] or [np.zeros(0, np.int64)]))
    if len(train_idx):
        speakers = [data.corpus[int(i)].speaker for i in train_idx]
        labels = data.labels[train_idx].tolist()
        share, single, total = single_class_share(speakers, labels)
        result["single_class_speakers"] = {"share": round(share, 4), "speakers": single, "of": total,
                                           "limit": SINGLE_CLASS_LIMIT}
        warning = single_class_warning(config, speakers, labels)
        if warning:
            warnings.append(warning)
    if "test" in corpora:
        test_idx = np.unique(np.concatenate([np.asarray(f.test, dtype=np.int64) for f in folds]))
        present = set(data.labels[test_idx].tolist())
        missing = [c for i, c in enumerate(data.classes) if i not in present]
        result["missing_in_test"] = missing
        if missing:
            warnings.append(f"the test corpus {corpora['test']!r} has no utterance of class(es) {', '.join(missing)}: "
                            "their recall is undefined and UA averages over the classes present")
    result["warnings"] = warnings
    return result


def write_data_checks(config: dict, data, folds: list, run_dir: Path, log: Callable[[str], None] = print) -> dict:
    """data.json in the run directory; each warning is also logged."""
    checks = data_checks(config, data, folds)
    write_json(Path(run_dir) / "data.json", checks)
    for warning in checks["warnings"]:
        log(f"warning: {warning}")
    return checks
