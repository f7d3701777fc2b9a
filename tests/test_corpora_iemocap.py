"""IEMOCAP loader on a tiny folder that mimics the release layout."""

from __future__ import annotations

from pathlib import Path

import pytest
import soundfile as sf

from emofuse.corpora import load_corpus
from emofuse.corpora.iemocap import parse_wdseg
from emofuse.errors import DataError
from helpers import tone

EVAL_HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"

# (utterance, label, start, end, transcript)
DIALOGS = {
    ("Session1", "Ses01F_impro01"): [
        ("Ses01F_impro01_F000", "neu", 6.2901, 8.2357, "Excuse me."),
        ("Ses01F_impro01_M000", "ang", 8.5, 10.0, "Do you have your forms?"),
        ("Ses01F_impro01_F001", "xxx", 10.1, 11.4, "Yeah."),
        ("Ses01F_impro01_M001", "exc", 11.5, 13.0, "Great, let's go."),
    ],
    ("Session2", "Ses02M_script01_1"): [
        ("Ses02M_script01_1_F000", "sad", 1.0, 2.5, "I miss him."),
        ("Ses02M_script01_1_M000", "fru", 3.0, 4.0, "Whatever."),
    ],
}

WDSEG = """ SFrm  EFrm    SegAScr Word
    0    32    -681290 <s>
   33    47    -127018 EXCUSE
   48    52     -20000 <sil>
   53    71    -295618 ME(2)
   72    80     -12345 ++BREATH++
   81    93      -1234 </s>
 Total score:    -1137505
"""


def label_block(utt, label, start, end):
    return (
        f"[{start:.4f} - {end:.4f}]\t{utt}\t{label}\t[2.5000, 3.0000, 3.5000]\n"
        "C-E2:\tNeutral;\t()\nC-E3:\tNeutral;\t()\nA-E3:\tval 3; act 2; dom  2;\t()\n\n"
    )


def tiny_iemocap(root: Path) -> Path:
    for (session, dialog), utterances in DIALOGS.items():
        base = root / session
        (base / "dialog" / "EmoEvaluation" / "Categorical").mkdir(parents=True)  # sub-folders are ignored
        (base / "dialog" / "transcriptions").mkdir(parents=True)
        (base / "dialog" / "EmoEvaluation" / f"{dialog}.txt").write_text(
            EVAL_HEADER + "".join(label_block(u, lab, s, e) for u, lab, s, e, _ in utterances)
        )
        lines = [f"{u} [{s:08.4f}-{e:08.4f}]: {text}" for u, _, s, e, text in utterances]
        lines.append(f"{dialog}_MXX0 [020.0000-021.0000]: (a turn without a label)")
        (base / "dialog" / "transcriptions" / f"{dialog}.txt").write_text("\n".join(lines) + "\n")
        for utt, *_ in utterances:
            wav = base / "sentences" / "wav" / dialog / f"{utt}.wav"
            wav.parent.mkdir(parents=True, exist_ok=True)
            sf.write(wav, tone(1.0), 16000)
            seg = base / "sentences" / "ForcedAlignment" / dialog / f"{utt}.wdseg"
            seg.parent.mkdir(parents=True, exist_ok=True)
            seg.write_text(WDSEG)
    return root


def test_labels_speakers_sessions_and_transcripts(tmp_path):
    corpus = load_corpus("iemocap", tiny_iemocap(tmp_path))
    by_id = {u.id: u for u in corpus}
    # xxx and fru are outside iemocap4; exc is merged into happy.
    assert set(by_id) == {"Ses01F_impro01_F000", "Ses01F_impro01_M000", "Ses01F_impro01_M001", "Ses02M_script01_1_F000"}
    assert corpus.excluded == {"xxx": 1, "fru": 1}
    assert by_id["Ses01F_impro01_M001"].label == "happy" and by_id["Ses01F_impro01_M001"].original_label == "exc"
    # Speaker = session + the utterance's own gender, not the dialog's.
    assert by_id["Ses01F_impro01_M000"].speaker == "Ses01M"
    assert by_id["Ses02M_script01_1_F000"].speaker == "Ses02F"
    assert {u.session for u in corpus} == {"Ses01", "Ses02"}
    u = by_id["Ses01F_impro01_F000"]
    assert u.transcript == "Excuse me."
    assert u.meta["dialog_start"] == pytest.approx(6.2901) and u.meta["valence"] == 2.5
    assert u.meta["gender"] == "female" and u.meta["kind"] == "improvised"
    assert Path(u.audio).name == "Ses01F_impro01_F000.wav" and not corpus.skipped


def test_word_timings_drop_markers_and_pronunciation_variants(tmp_path):
    corpus = load_corpus("iemocap", tiny_iemocap(tmp_path))
    words = corpus[0].words
    assert [w.text for w in words] == ["excuse", "me"]
    assert (words[0].start, words[0].end) == pytest.approx((0.33, 0.48))
    assert (words[1].start, words[1].end) == pytest.approx((0.53, 0.72))


def test_missing_transcription_and_alignment_leave_fields_empty(tmp_path):
    root = tiny_iemocap(tmp_path)
    (root / "Session1/dialog/transcriptions/Ses01F_impro01.txt").unlink()
    (root / "Session1/sentences/ForcedAlignment/Ses01F_impro01/Ses01F_impro01_F000.wdseg").unlink()
    by_id = {u.id: u for u in load_corpus("iemocap", root)}
    assert by_id["Ses01F_impro01_F000"].transcript is None and by_id["Ses01F_impro01_F000"].words is None
    assert by_id["Ses02M_script01_1_F000"].transcript == "I miss him."


def test_unparsable_label_line_is_named_with_its_line_number(tmp_path):
    root = tiny_iemocap(tmp_path)
    labels = root / "Session2/dialog/EmoEvaluation/Ses02M_script01_1.txt"
    labels.write_text(EVAL_HEADER + "[1.0 - oops]\tSes02M_script01_1_F000\tsad\n")
    corpus = load_corpus("iemocap", root)
    [skipped] = corpus.skipped
    assert skipped.path == f"{labels}:3" and "unparsable label line" in skipped.reason
    assert {u.session for u in corpus} == {"Ses01"}


def test_label_file_without_any_label_line_is_reported(tmp_path):
    root = tiny_iemocap(tmp_path)
    labels = root / "Session2/dialog/EmoEvaluation/Ses02M_script01_1.txt"
    labels.write_bytes(b"\x00\x01binary junk\n")
    [skipped] = load_corpus("iemocap", root).skipped
    assert skipped.path == str(labels) and "no label lines" in skipped.reason


def test_unparsable_transcription_file_skips_its_dialog_once(tmp_path):
    root = tiny_iemocap(tmp_path)
    transcript = root / "Session1/dialog/transcriptions/Ses01F_impro01.txt"
    transcript.write_text("this is not\na transcription\n")
    corpus = load_corpus("iemocap", root)
    [skipped] = corpus.skipped
    assert skipped.path == str(transcript) and "unparsable transcription file" in skipped.reason
    assert {u.session for u in corpus} == {"Ses02"}


def test_malformed_transcription_line_skips_that_utterance(tmp_path):
    root = tiny_iemocap(tmp_path)
    transcript = root / "Session1/dialog/transcriptions/Ses01F_impro01.txt"
    lines = transcript.read_text().splitlines()
    lines[1] = "Ses01F_impro01_M000 [bad time]: Do you have your forms?"
    transcript.write_text("\n".join(lines) + "\n")
    corpus = load_corpus("iemocap", root)
    [skipped] = corpus.skipped
    assert skipped.path == f"{transcript}:2"
    assert "Ses01F_impro01_M000" not in {u.id for u in corpus} and len(corpus) == 3


def test_broken_wdseg_and_missing_wav_are_skipped_with_reasons(tmp_path):
    root = tiny_iemocap(tmp_path)
    seg = root / "Session1/sentences/ForcedAlignment/Ses01F_impro01/Ses01F_impro01_F000.wdseg"
    seg.write_text(" SFrm  EFrm    SegAScr Word\n   33  x  -1 EXCUSE\n")
    wav = root / "Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_M000.wav"
    wav.unlink()
    reasons = {s.path: s.reason for s in load_corpus("iemocap", root).skipped}
    assert "non-integer" in reasons[f"{seg}:2"]
    assert reasons[str(wav)] == "audio file not found"


def test_zero_length_wav_is_skipped(tmp_path):
    root = tiny_iemocap(tmp_path)
    wav = root / "Session2/sentences/wav/Ses02M_script01_1/Ses02M_script01_1_F000.wav"
    sf.write(wav, tone(0.0), 16000)
    [skipped] = load_corpus("iemocap", root).skipped
    assert skipped.path == str(wav) and "no samples" in skipped.reason


def test_missing_folder_and_wrong_layout_raise(tmp_path):
    with pytest.raises(DataError, match="IEMOCAP folder not found"):
        load_corpus("iemocap", tmp_path / "nope")
    with pytest.raises(DataError, match="no Session1..5 folders"):
        load_corpus("iemocap", tmp_path)


def test_wdseg_without_header_is_not_a_wdseg(tmp_path):
    path = tmp_path / "x.wdseg"
    path.write_text("hello there\n")
    with pytest.raises(DataError, match="unparsable word timing row|no 'SFrm"):
        parse_wdseg(path)


def test_unknown_label_is_reported_not_dropped(tmp_path):
    root = tiny_iemocap(tmp_path)
    labels = root / "Session2/dialog/EmoEvaluation/Ses02M_script01_1.txt"
    labels.write_text(EVAL_HEADER + label_block("Ses02M_script01_1_F000", "bored", 1.0, 2.5))
    corpus = load_corpus("iemocap", root)
    [skipped] = corpus.skipped
    assert "unknown label 'bored'" in skipped.reason and skipped.path == f"{labels}:3"
