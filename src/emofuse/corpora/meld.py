"""MELD (Poria et al., ACL 2019): utterances from the TV series Friends, 7 emotions.

Layout: a folder with `train_sent_emo.csv`, `dev_sent_emo.csv`, `test_sent_emo.csv`
(columns Sr No., Utterance, Speaker, Emotion, Sentiment, Dialogue_ID, Utterance_ID,
Season, Episode, StartTime, EndTime; UTF-8, typographic quotes kept as they are), or one
of those CSV files. The split is read from the file name (train / dev / test).

Audio, when the user holds MELD.Raw: clips `dia{D}_utt{U}.mp4` (decoded later through
PyAV), looked up per split in these folders, directly under the CSVs' folder or under
`<split>/`:
    train: train_splits/   dev: dev_splits_complete/, dev_splits/   test: output_repeated_splits_test/, test_splits/
    (and plain train/, dev/, test/ holding the clips)
A split without a clip folder gives a text-only manifest (audio = None). When the clip
folder exists, an utterance whose clip is missing or unreadable is skipped with the reason
(so a manifest never mixes clips and missing audio within a split).

ids are `{split}_dia{D}_utt{U}`; speaker = the character's name. Characters recur across
the splits: MELD's protocol is its official train/dev/test split (`meta["split"]`), which
is NOT speaker-exclusive; use `official_split`, not speaker folds, to compare with
published numbers.
"""

from __future__ import annotations

import re
from pathlib import Path

from emofuse.corpora.common import PreparedCorpus, Scan, one_line
from emofuse.errors import DataError

SPLITS = ("train", "dev", "test")
CSV_NAMES = {split: f"{split}_sent_emo.csv" for split in SPLITS}
CLIP_FOLDERS = {
    "train": ("train_splits", "train"),
    "dev": ("dev_splits_complete", "dev_splits", "dev"),
    "test": ("output_repeated_splits_test", "test_splits", "test"),
}
REQUIRED_COLUMNS = ("Utterance", "Speaker", "Emotion", "Dialogue_ID", "Utterance_ID")
_TIME = re.compile(r"^(\d+):(\d\d):(\d\d)[,.](\d+)$")


def parse_time(text) -> float | None:
    """'00:20:57,256' (SubRip style, as in MELD) -> seconds; None when absent or malformed."""
    match = _TIME.match(str(text).strip()) if isinstance(text, str) else None
    if not match:
        return None
    h, m, s, frac = match.groups()
    return int(h) * 3600 + int(m) * 60 + int(s) + int(frac) / 10 ** len(frac)


def split_of(csv: Path) -> str:
    for split in SPLITS:
        if csv.name.lower().startswith(split):
            return split
    raise DataError(csv, f"cannot tell the split from the file name (expected one of {', '.join(CSV_NAMES.values())})")


def clip_folder(root: Path, split: str) -> Path | None:
    for name in CLIP_FOLDERS[split]:
        for candidate in (root / name, root / split / name):
            if candidate.is_dir() and any(candidate.glob("dia*_utt*.mp4")):
                return candidate
    return None


def _read_csv(csv: Path):
    import pandas as pd

    try:
        table = pd.read_csv(csv, encoding="utf-8", dtype=str, keep_default_na=False)
    except UnicodeDecodeError as exc:
        raise DataError(csv, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except Exception as exc:  # pandas parser errors, empty file
        raise DataError(csv, f"unparsable CSV ({one_line(exc)})") from exc
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise DataError(csv, f"missing column(s) {', '.join(missing)} (has: {', '.join(table.columns)})")
    return table


def load_meld(path: str | Path, scan: Scan) -> PreparedCorpus:
    path = Path(path)
    if not path.exists():
        raise DataError(path, "MELD folder or CSV not found")
    if path.is_file():
        csvs, root = [path], path.parent
    else:
        root = path
        csvs = [root / name for name in CSV_NAMES.values() if (root / name).is_file()]
        if not csvs:
            raise DataError(root, f"no MELD CSV files ({', '.join(CSV_NAMES.values())})")

    rows = []  # (csv, split, clip folder or None, row number, row) over every CSV
    for csv in csvs:
        split = split_of(csv)
        clips = clip_folder(root, split)
        records = _read_csv(csv).to_dict("records")
        rows.extend((csv, split, clips, number, row) for number, row in enumerate(records, start=1))
    for csv, split, clips, row_number, row in scan.each(rows):
        source = f"{csv}:row {row_number}"
        try:
            dialogue, number = int(row["Dialogue_ID"]), int(row["Utterance_ID"])
        except ValueError:
            scan.skip(source, f"Dialogue_ID/Utterance_ID not integers ({row['Dialogue_ID']!r}, {row['Utterance_ID']!r})")
            continue
        text, speaker = row["Utterance"].strip(), row["Speaker"].strip()
        if not speaker:
            scan.skip(source, "empty Speaker")
            continue
        label = scan.label(row["Emotion"], source)
        if label is None:
            continue
        audio = None
        if clips is not None:
            clip = clips / f"dia{dialogue}_utt{number}.mp4"
            if scan.duration(clip) is None:
                continue
            audio = clip
        scan.add(
            source, id=f"{split}_dia{dialogue}_utt{number}", audio=audio, speaker=speaker, label=label,
            original_label=row["Emotion"].strip(), transcript=text or None,
            meta={
                "split": split,
                "dialogue": f"{split}_dia{dialogue}",
                "sentiment": row.get("Sentiment", "").strip() or None,
                "season": _int_or_none(row.get("Season")),
                "episode": _int_or_none(row.get("Episode")),
                "episode_start": parse_time(row.get("StartTime")),
                "episode_end": parse_time(row.get("EndTime")),
            },
        )
    return scan.finish("meld", path)


def _int_or_none(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
