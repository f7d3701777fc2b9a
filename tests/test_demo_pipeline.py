"""`emofuse demo` end to end: the fused model must earn its keep.

The demo corpus is built so that the words alone cannot resolve the ambiguous phrases and
the voice alone cannot resolve the lexical sentences; H-MM-4 must beat chance and both
unimodal baselines (mean test UA over speaker-exclusive folds), and the demo must leave a
usable model directory and explanation behind. Its showcase is a held-out recording of at
least three words, predicted without its transcript (the words are Whisper's), ranked by a
stated rule (`rank_showcases`), tested here on tiny predictions tables.
"""

from __future__ import annotations

import csv
import json

import pytest

from emofuse.align.text import normalise_transcript
from emofuse.corpora.base import Utterance
from emofuse.demo.pipeline import (
    BASELINE, FUSED, MIN_WORDS, MODELS, WHISPER_MODEL, demo_config, rank_showcases, run_demo, showcase_candidates,
)
from emofuse.models.modeldir import read_info

# The demo's own (already small) settings, with the progress bar off.
SETTINGS = ["trainer.progress=false"]

CLASSES = ("angry", "happy", "neutral", "sad")


def utterance(uid: str, transcript: str, kind: str, label: str = "sad") -> Utterance:
    return Utterance(uid, f"{uid}.flac", uid[:3], label, label, transcript=transcript, meta={"kind": kind})


# id -> (transcript, kind, H-MM-4's probability of the true class, B-ACO-1's)
TABLE = {
    "s01_gain": ("I really miss my dog", "lexical", 0.80, 0.10),  # gain 0.70: the showcase
    "s01_sure": ("I lost everything today", "lexical", 0.99, 0.50),  # surer, but gains only 0.49
    "s01_both": ("this is so sad", "both", 0.70, 0.30),  # gain 0.40
    "s01_short": ("so sad", "lexical", 0.99, 0.01),  # gain 0.98 on two words: too short
    "s01_tone": ("oh my gosh", "acoustic", 0.95, 0.05),  # gain 0.90, but the words carry nothing
}


def write_fold(run_dir, fold: int, test_ids, probabilities: dict[str, float], train=("s02_a",), val=("s03_a",)):
    """A fold folder as `training.fold` writes it: split.json and predictions.csv."""
    folder = run_dir / f"fold-{fold}"
    folder.mkdir(parents=True)
    (folder / "split.json").write_text(json.dumps(
        {"index": fold, "name": f"fold-{fold}", "train": list(train), "val": list(val), "test": list(test_ids),
         "classes": list(CLASSES)}))
    with open(folder / "predictions.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "speaker", "label", "prediction", *[f"p_{c}" for c in CLASSES]])
        for uid, p in probabilities.items():  # the true class is sad; the rest shared evenly
            rest = (1 - p) / 3
            writer.writerow([uid, uid[:3], "sad", "sad" if p > rest else "angry", rest, rest, rest, p])


def test_showcase_is_the_wordy_test_utterance_where_fusion_gains_most_over_the_voice(tmp_path):
    corpus = [utterance(uid, t, kind) for uid, (t, kind, _, _) in TABLE.items()]
    corpus.append(utterance("s02_a", "I hate this so much", "lexical"))  # training speaker
    write_fold(tmp_path / FUSED, 2, TABLE, {uid: row[2] for uid, row in TABLE.items()})
    write_fold(tmp_path / BASELINE, 2, TABLE, {uid: row[3] for uid, row in TABLE.items()})
    ranked = showcase_candidates(tmp_path / FUSED, tmp_path / BASELINE, 2, corpus, log=lambda line: None)
    assert [show.id for show in ranked] == ["s01_gain", "s01_sure", "s01_both"]  # gains 0.70, 0.49, 0.40
    show = ranked[0]
    assert show.p_true == {FUSED: pytest.approx(0.80), BASELINE: pytest.approx(0.10)}
    assert show.fold == 2 and show.kind == "lexical" and show.label == "sad"
    assert "gain" in show.rule


def test_showcase_prefers_words_that_carry_emotion_but_falls_back_to_any_kind():
    tone_only = [utterance(uid, t, kind) for uid, (t, kind, _, _) in TABLE.items() if kind == "acoustic"]
    p_fused = {uid: row[2] for uid, row in TABLE.items()}
    p_voice = {uid: row[3] for uid, row in TABLE.items()}
    ranked, rule = rank_showcases(tone_only, p_fused, p_voice)
    assert [u.id for u in ranked] == ["s01_tone"] and "kind" not in rule
    everything = [utterance(uid, t, kind) for uid, (t, kind, _, _) in TABLE.items()]
    ranked, rule = rank_showcases(everything, p_fused, p_voice)
    assert ranked[0].id == "s01_gain" and "lexical or both" in rule


def test_showcase_picks_by_the_fused_probability_when_the_folds_differ(tmp_path):
    corpus = [utterance(uid, t, kind) for uid, (t, kind, _, _) in TABLE.items()]
    write_fold(tmp_path / FUSED, 0, TABLE, {uid: row[2] for uid, row in TABLE.items()})
    write_fold(tmp_path / BASELINE, 0, TABLE, {uid: row[3] for uid, row in TABLE.items()}, train=("s04_a",))
    said = []
    show = showcase_candidates(tmp_path / FUSED, tmp_path / BASELINE, 0, corpus, log=said.append)[0]
    assert show.id == "s01_sure"  # the highest H-MM-4 probability among the wordy lexical ones
    assert show.p_true[BASELINE] is None
    assert any("split differently" in line for line in said)


def test_the_whisper_row_is_b_aco_1_on_whisper_frames_and_nothing_else(tmp_path):
    ours, theirs = demo_config(WHISPER_MODEL, tmp_path), demo_config(BASELINE, tmp_path)
    assert ours.data.acoustic == "whisper" and theirs.data.acoustic == "compare_lld"
    assert ours.data.asr == theirs.data.asr == "whisper"
    assert ours.model == theirs.model and ours.optim == theirs.optim and ours.protocol == theirs.protocol
    assert (ours.data.words, ours.data.align, ours.data.normalise) == (theirs.data.words, theirs.data.align,
                                                                       theirs.data.normalise)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    # Without the Whisper-frame row: it adds a third to the demo's time, and its frames and
    # B-ACO-1 are tested on their own; the showcase still hears its words through Whisper.
    out = tmp_path_factory.mktemp("demo")
    return run_demo(out, SETTINGS, workers=2, log=lambda line: None, progress=False, whisper_frames=False)


@pytest.mark.slow
def test_demo_fused_model_beats_chance_and_both_unimodal_models(demo):
    ua = {name: demo.summaries[name]["ua"]["mean"] for name in MODELS}
    assert ua["h-mm-4"] > 0.25 + 0.1, ua
    assert ua["h-mm-4"] > ua["b-aco-1"], ua
    assert ua["h-mm-4"] > ua["b-lex"], ua


@pytest.mark.slow
def test_demo_leaves_a_model_directory_an_explanation_and_a_comparison(demo):
    assert (demo.model_dir / "model.safetensors").is_file()
    assert read_info(demo.model_dir).name == "H-MM-4"
    page = demo.explanation.read_text()
    assert demo.prediction["label"] in page
    assert set(demo.prediction["probabilities"]) == {"angry", "happy", "neutral", "sad"}
    assert demo.prediction["words"] and all("gate" in w for w in demo.prediction["words"])
    table = (demo.out_dir / "comparison.md").read_text()
    assert all(m.upper() in table for m in demo.models)


@pytest.mark.slow
def test_demo_showcase_has_three_words_and_is_held_out_from_the_exported_fold(demo):
    fold = read_info(demo.model_dir).source["fold"]
    split = json.loads((demo.runs["h-mm-4"] / f"fold-{fold}" / "split.json").read_text())
    assert demo.prediction["id"] in split["test"]
    assert demo.prediction["id"] not in split["train"] + split["val"]
    assert len(demo.prediction["true_transcript"].split()) >= MIN_WORDS
    assert demo.prediction["cv_p_true"][BASELINE] is not None  # the two runs split the fold alike


@pytest.mark.slow
def test_demo_showcase_words_are_whispers_not_the_transcripts(demo):
    assert demo.prediction["align_source"] == "asr"
    assert demo.prediction["recogniser"].startswith("whisper")
    assert demo.prediction["heard"] == " ".join(w["text"] for w in demo.prediction["words"])
    if "none of the first" not in demo.prediction["showcase_rule"]:  # the demo shows one heard as written
        assert demo.prediction["heard"] == " ".join(normalise_transcript(demo.prediction["true_transcript"]))
