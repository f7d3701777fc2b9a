"""IEMOCAP (Busso et al. 2008), read from the release layout.

    ROOT/Session1 .. Session5/
      dialog/EmoEvaluation/<dialog>.txt        labels: one line per utterance, e.g.
          [6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5000, 2.5000, 2.5000]
          (the label given there is the release's majority label; "xxx" = no agreement.
          Annotator lines "C-E2: ..." / "A-E3: ..." and the "%" header are ignored.)
      dialog/transcriptions/<dialog>.txt       Ses01F_impro01_F000 [006.2901-008.2357]: Excuse me.
      sentences/wav/<dialog>/<utterance>.wav   one file per utterance
      sentences/ForcedAlignment/<dialog>/<utterance>.wdseg
          header "SFrm  EFrm  SegAScr Word", rows "  33  47  -127018 EXCUSE", then
          "Total score: ..."; frames of 10 ms, EFrm inclusive.

Speaker = session + the utterance's own gender: the letter of the final id token
(`Ses01F_impro01_M013` -> Ses01M; the letter after "Ses01" only says who wore the
markers). Session = "Ses01" .. "Ses05", the group of leave-one-session-out and of the
Aguilar et al. (2019) protocol.

Words come from the corpus's forced alignment: times relative to the utterance, start =
SFrm / 100 s and end = (EFrm + 1) / 100 s (EFrm is the word's last frame). Dropped:
`<s>`, `</s>`, `<sil>` and noise tokens `++BREATH++`-style; pronunciation variants
lose their suffix (`THE(2)` -> `the`); words are lower-cased.

A missing transcription line or .wdseg leaves `transcript` / `words` None (the align stage
can supply them); a malformed one skips the utterance with the reason, as does missing or
unreadable audio.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from emofuse.corpora.base import Word
from emofuse.corpora.common import PreparedCorpus, Scan, corpus_folders
from emofuse.errors import DataError

_LABEL_LINE = re.compile(
    r"^\[\s*(?P<start>[\d.]+)\s*-\s*(?P<end>[\d.]+)\s*\]\s+(?P<utt>\S+)\s+(?P<label>\S+)\s+"
    r"\[\s*(?P<val>[\d.]+)\s*,\s*(?P<act>[\d.]+)\s*,\s*(?P<dom>[\d.]+)\s*\]\s*$"
)
_TRANSCRIPT_LINE = re.compile(r"^(?P<utt>\S+)\s+\[(?P<start>[\d.]+)-(?P<end>[\d.]+)\]:\s*(?P<text>.*)$")
_UTTERANCE_ID = re.compile(r"^(?P<session>Ses\d\d)[FM]_.+_(?P<gender>[FM])[^_]*$")
_NOT_WORDS = {"<s>", "</s>", "<sil>"}
_VARIANT = re.compile(r"\(\d+\)$")


@dataclass
class _Label:
    utt: str
    label: str
    start: float
    end: float
    vad: tuple[float, float, float]
    source: str  # file:line of the label


def parse_emo_evaluation(path: Path) -> list[_Label]:
    """The utterance lines of one EmoEvaluation file; raises DataError naming file:line."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise DataError(path, f"cannot read label file ({exc.strerror})") from exc
    labels = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line.startswith("["):
            continue  # header, annotator lines, blank lines
        match = _LABEL_LINE.match(line)
        if not match:
            raise DataError(
                f"{path}:{number}",
                "unparsable label line (expected '[start - end] UTTERANCE label [v, a, d]')",
            )
        labels.append(
            _Label(
                utt=match["utt"],
                label=match["label"],
                start=float(match["start"]),
                end=float(match["end"]),
                vad=(float(match["val"]), float(match["act"]), float(match["dom"])),
                source=f"{path}:{number}",
            )
        )
    if not labels:
        raise DataError(path, "no label lines of the form '[start - end] UTTERANCE label [v, a, d]'")
    return labels


def parse_transcriptions(path: Path, wanted: set[str]) -> tuple[dict[str, str], dict[str, tuple[str, str]]]:
    """(transcript by utterance id, (file:line, problem) by utterance id) for one dialog.

    Lines that do not parse are a problem only for the labelled utterances they name; lines
    about other turns (the release has some, e.g. `..._MXX0`) are not ours to judge. A file
    with text but no parsable line at all is unparsable as a whole (DataError).
    """
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise DataError(path, f"cannot read transcription file ({exc.strerror})") from exc
    transcripts: dict[str, str] = {}
    broken: dict[str, tuple[str, str]] = {}
    nonempty = 0
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        nonempty += 1
        match = _TRANSCRIPT_LINE.match(line)
        if match:
            transcripts[match["utt"]] = match["text"].strip()
            continue
        first = line.split()[0]
        if first in wanted:
            broken[first] = (f"{path}:{number}", "unparsable transcription line (expected 'ID [start-end]: text')")
    if nonempty and not transcripts:
        raise DataError(path, "unparsable transcription file: no line of the form 'ID [start-end]: text'")
    return transcripts, broken


def parse_wdseg(path: Path) -> list[Word]:
    """Word timings of one utterance from its .wdseg file (Sphinx frames of 10 ms)."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise DataError(path, f"cannot read word timings ({exc.strerror})") from exc
    words: list[Word] = []
    header_seen = False
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if fields[0] == "SFrm":
            header_seen = True
            continue
        if fields[0].lower().startswith("total"):
            break
        if len(fields) != 4:
            raise DataError(f"{path}:{number}", "unparsable word timing row (expected 'SFrm EFrm SegAScr Word')")
        try:
            start_frame, end_frame = int(fields[0]), int(fields[1])
            int(fields[2])
        except ValueError:
            raise DataError(f"{path}:{number}", "word timing row has non-integer frames or score") from None
        if end_frame < start_frame:
            raise DataError(f"{path}:{number}", f"word ends (frame {end_frame}) before it starts ({start_frame})")
        token = fields[3]
        if token.lower() in _NOT_WORDS or (token.startswith("++") and token.endswith("++")):
            continue
        token = _VARIANT.sub("", token).lower()
        if token:
            words.append(Word(token, start_frame / 100.0, (end_frame + 1) / 100.0))
    if not header_seen:
        raise DataError(path, "not a .wdseg file: no 'SFrm EFrm SegAScr Word' header")
    return words


def _is_session(folder: Path) -> bool:
    return (folder / "dialog").is_dir() and (folder / "sentences").is_dir()


def load_iemocap(path: str | Path, scan: Scan) -> PreparedCorpus:
    root, sessions = corpus_folders(
        path, "IEMOCAP", "Session*", _is_session, "no Session1..5 folders: expected the IEMOCAP release layout"
    )

    # Pass 1: labels (cheap), so the progress bar knows the total.
    todo: list[tuple[Path, str, _Label]] = []  # (session folder, dialog, label)
    label_files = 0
    for session in sessions:
        folder = session / "dialog" / "EmoEvaluation"
        if not folder.is_dir():
            scan.skip(folder, "EmoEvaluation folder missing: this session has no labels")
            continue
        for file in sorted(folder.glob("Ses*.txt")):
            label_files += 1
            try:
                labels = parse_emo_evaluation(file)
            except DataError as exc:
                scan.skip(exc.path, exc.problem)
                continue
            todo.extend((session, file.stem, label) for label in labels)
    if not label_files and not scan.problems.skipped:
        raise DataError(root, "no EmoEvaluation label files (SessionN/dialog/EmoEvaluation/Ses*.txt)")

    transcript_cache: dict[Path, tuple[dict[str, str], dict[str, tuple[str, str]]] | None] = {}
    wanted_by_dialog: dict[tuple[Path, str], set[str]] = {}
    for session, dialog, label in todo:
        wanted_by_dialog.setdefault((session, dialog), set()).add(label.utt)

    for session, dialog, lab in scan.each(todo):
        ident = _UTTERANCE_ID.match(lab.utt)
        if not ident or not lab.utt.startswith(dialog + "_"):
            scan.skip(lab.source, f"utterance id {lab.utt!r} does not fit dialog {dialog!r} (expected {dialog}_F000 style)")
            continue
        label = scan.label(lab.label, lab.source)
        if label is None:
            continue

        wav = session / "sentences" / "wav" / dialog / f"{lab.utt}.wav"
        duration = scan.duration(wav)
        if duration is None:
            continue

        transcript = None
        tfile = session / "dialog" / "transcriptions" / f"{dialog}.txt"
        if tfile.is_file():
            if tfile not in transcript_cache:
                wanted = wanted_by_dialog[(session, dialog)]
                try:
                    transcript_cache[tfile] = parse_transcriptions(tfile, wanted)
                except DataError as exc:  # reported once for the file, not per utterance
                    transcript_cache[tfile] = None
                    scan.skip(exc.path, f"{exc.problem}; its {len(wanted)} labelled utterance(s) are skipped")
            parsed = transcript_cache[tfile]
            if parsed is None:
                continue
            transcripts, broken = parsed
            if lab.utt in broken:
                scan.skip(*broken[lab.utt])
                continue
            transcript = transcripts.get(lab.utt)

        words = None
        wdseg = session / "sentences" / "ForcedAlignment" / dialog / f"{lab.utt}.wdseg"
        if wdseg.is_file():
            try:
                words = parse_wdseg(wdseg)
            except DataError as exc:
                scan.skip(exc.path, exc.problem)
                continue

        session_code, gender = ident["session"], ident["gender"]
        scan.add(
            lab.source, id=lab.utt, audio=wav, speaker=f"{session_code}{gender}", label=label,
            original_label=lab.label, session=session_code, transcript=transcript, words=words,
            meta={
                "dialog": dialog,
                "kind": "improvised" if "_impro" in dialog else "scripted",
                "gender": "female" if gender == "F" else "male",
                "dialog_start": lab.start,
                "dialog_end": lab.end,
                "valence": lab.vad[0],
                "activation": lab.vad[1],
                "dominance": lab.vad[2],
                "duration": round(duration, 4),
            },
        )
    return scan.finish("iemocap", root)
