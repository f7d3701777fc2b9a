"""The feature store: keyed entries, no-op re-runs, resume, atomic writes, failures, loading."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from emofuse.corpora.base import Utterance, Word
from emofuse.errors import ConfigError, DataError
from emofuse.features import frames as frames_module
from emofuse.features import store as store_module
from emofuse.features.store import extract as extract_module
from emofuse.features.batch import collate
from emofuse.features.store import FeatureStore, split_features, utterance_key
from helpers import make_corpus, tone


@pytest.fixture
def vectors(tmp_path) -> str:
    path = tmp_path / "vectors.txt"
    path.write_text("door 1 0 0\nnumber 0 1 0\none 0 0 1\ntwo 1 1 0\nthree 0 1 1\n")
    return f"glove-file:{path}"


def entry_files(root: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*") if p.suffix in (".safetensors", ".json")
            and p.name != "settings.json"}


def test_extract_then_load_gives_padded_batches_with_masks(tmp_path, vectors):
    corpus = make_corpus(tmp_path)
    store = FeatureStore(tmp_path / "store")
    report = store.extract(corpus, ["fbank40", vectors], align="proportional", progress=False)
    assert report.computed == 3 and not report.failures and report.align_sources == {"proportional": 3}
    items = store.load(corpus, acoustic="fbank40", words=vectors, align="proportional")
    assert [it.id for it in items] == ["u0", "u1", "u2"]
    assert [it.acoustic.shape for it in items] == [(80, 40), (100, 40), (120, 40)]
    assert items[0].words == ["door", "number", "one"] and items[0].word_vectors.shape == (3, 3)
    np.testing.assert_array_equal(items[0].word_vectors[0], [1, 0, 0])
    # proportional words cover the tone (0.2 s .. 0.6 s); the speech mask comes from them
    assert items[0].word_times[0, 0] == pytest.approx(0.2, abs=0.03)
    assert items[0].speech_mask[25:55].all() and not items[0].speech_mask[:15].any()
    batch = collate(items, [0, 1, 0])
    assert batch.acoustic.shape == (3, 120, 40) and batch.acoustic_mask.sum(1).tolist() == [80, 100, 120]
    assert batch.words.shape == (3, 3, 3) and batch.word_frames.shape == (3, 3, 2)
    assert not batch.speech_mask[0, 80:].any()


def test_batches_come_padded_with_labels_and_token_ids(tmp_path, vectors):
    from emofuse.features.vocab import Vocabulary

    corpus = make_corpus(tmp_path)
    corpus.utterances[1].label = "y"
    store = FeatureStore(tmp_path / "store")
    store.extract(corpus, ["fbank40", vectors], align="proportional", progress=False)
    vocab = Vocabulary.build([["door", "number"]])
    first, second = store.batches(corpus, ["x", "y"], batch_size=2, acoustic="fbank40", words=vectors,
                                  align="proportional", vocab=vocab)
    assert first.ids == ["u0", "u1"] and first.labels.tolist() == [0, 1] and second.labels.tolist() == [0]
    assert first.acoustic.shape == (2, 100, 40) and first.acoustic_mask[0, 80:].sum() == 0
    assert first.token_ids.tolist()[0] == [vocab.index["door"], vocab.index["number"], 1]


def test_unchanged_settings_are_a_no_op(tmp_path, vectors):
    corpus = make_corpus(tmp_path)
    store = FeatureStore(tmp_path / "store")
    store.extract(corpus, ["fbank40", vectors], align="proportional", progress=False)
    before = entry_files(store.root)
    again = store.extract(corpus, ["fbank40", vectors], align="proportional", progress=False)
    assert again.computed == 0 and again.cached == 3
    assert entry_files(store.root) == before


def test_changed_setting_recomputes_into_a_new_entry(tmp_path, monkeypatch):
    corpus = make_corpus(tmp_path)
    store = FeatureStore(tmp_path / "store")
    store.extract(corpus, ["fbank40"], align=None, progress=False)
    old = store.load(corpus, acoustic="fbank40", align=None)
    old_dir = store.frames_dir("fbank40")
    monkeypatch.setitem(frames_module.FBANK, "preemphasis", 0.5)
    assert store.frames_dir("fbank40") != old_dir
    report = store.extract(corpus, ["fbank40"], align=None, progress=False)
    assert report.computed == 3
    new = store.load(corpus, acoustic="fbank40", align=None)
    assert not np.allclose(new[0].acoustic, old[0].acoustic)


def test_changed_vad_setting_recomputes_speech_masks_but_not_frames(tmp_path, monkeypatch):
    from emofuse.align import vad

    corpus = make_corpus(tmp_path)
    store = FeatureStore(tmp_path / "store")
    store.extract(corpus, ["fbank40"], align=None, progress=False)
    before = store.load(corpus, acoustic="fbank40", align=None)
    assert before[0].speech_mask[25:55].all() and not before[0].speech_mask[:15].any()
    monkeypatch.setitem(vad.VAD_SETTINGS, "floor_db", 0.0)  # nothing is loud enough now
    report = store.extract(corpus, ["fbank40"], align=None, progress=False)
    assert report.computed == 3 and set(report.stage_seconds) == {"audio", "vad"}
    after = store.load(corpus, acoustic="fbank40", align=None)
    assert not any(it.speech_mask.any() for it in after)
    np.testing.assert_array_equal(after[0].acoustic, before[0].acoustic)


def test_changed_transcript_realigns_but_keeps_frames(tmp_path, vectors):
    corpus = make_corpus(tmp_path)
    store = FeatureStore(tmp_path / "store")
    store.extract(corpus, ["fbank40", vectors], align="proportional", progress=False)
    corpus.utterances[1].transcript = "door door"
    report = store.extract(corpus, ["fbank40", vectors], align="proportional", progress=False)
    assert report.computed == 1 and report.align_sources == {"proportional": 1}
    assert report.stage_seconds.get("frames:fbank40", 0) == 0  # frames did not depend on the text
    assert store.load(corpus, words=vectors, align="proportional")[1].words == ["door", "door"]


def test_resume_computes_only_what_is_missing(tmp_path):
    corpus = make_corpus(tmp_path, n=4)
    store = FeatureStore(tmp_path / "store")
    store.extract(corpus.subset([0, 1]), ["fbank40"], align=None, progress=False)
    report = store.extract(corpus, ["fbank40"], align=None, progress=False)
    assert report.computed == 2 and report.cached == 2
    victim = next(store.frames_dir("fbank40").glob("u3-*.safetensors"))
    victim.unlink()
    report = store.extract(corpus, ["fbank40"], align=None, progress=False)
    assert report.computed == 1 and victim.exists()


def test_interrupted_run_keeps_finished_entries_and_resumes(tmp_path, monkeypatch):
    corpus = make_corpus(tmp_path, n=4)
    store = FeatureStore(tmp_path / "store")
    real, calls = extract_module.run_jobs, []

    def interrupted(jobs, cache_dir):
        calls.append(len(jobs))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(jobs, cache_dir)

    monkeypatch.setattr(extract_module, "run_jobs", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.extract(corpus, ["fbank40"], align=None, progress=False, chunk_size=1)
    assert len(store.load(corpus, acoustic="fbank40", align=None, missing="skip")) == 2
    monkeypatch.setattr(extract_module, "run_jobs", real)
    report = store.extract(corpus, ["fbank40"], align=None, progress=False)
    assert report.computed == 2 and report.cached == 2


def test_partial_temp_files_are_never_read_and_stale_ones_are_removed(tmp_path):
    corpus = make_corpus(tmp_path, n=2)
    store = FeatureStore(tmp_path / "store")
    store.extract(corpus, ["fbank40"], align=None, progress=False)
    folder = store.frames_dir("fbank40")
    good = next(folder.glob("u0-*.safetensors"))
    partial = folder / f".{good.name}.abc123.tmp"
    partial.write_bytes(good.read_bytes()[:50])  # what a killed writer leaves behind
    items = store.load(corpus, acoustic="fbank40", align=None)
    assert len(items) == 2 and items[0].acoustic.shape == (80, 40)
    old = time.time() - 2 * store_module.STALE_TMP_SECONDS
    os.utime(partial, (old, old))
    store.extract(corpus, ["fbank40"], align=None, progress=False)
    assert not partial.exists()


def test_a_corrupt_entry_gives_an_error_naming_it(tmp_path):
    corpus = make_corpus(tmp_path, n=1)
    store = FeatureStore(tmp_path / "store")
    store.extract(corpus, ["fbank40"], align=None, progress=False)
    entry = next(store.frames_dir("fbank40").glob("u0-*.safetensors"))
    entry.write_bytes(b"\x00" * 20)
    with pytest.raises(DataError, match="unreadable feature entry") as exc:
        store.load(corpus, acoustic="fbank40", align=None)
    assert entry.name in str(exc.value)


def test_failures_are_listed_per_utterance_and_do_not_stop_the_run(tmp_path):
    corpus = make_corpus(tmp_path)
    Path(corpus[1].audio).write_bytes(b"this is not audio")
    store = FeatureStore(tmp_path / "store")
    report = store.extract(corpus, ["fbank40"], align="proportional", progress=False)
    assert report.failed_ids == ["u1"]
    assert report.failures[0].stage == "audio" and "u1.wav" in report.failures[0].reason
    assert [it.id for it in store.load(corpus, acoustic="fbank40", align="proportional", missing="skip")] == ["u0", "u2"]
    with pytest.raises(DataError, match="1 of 3 utterances have no stored fbank40.*emofuse extract"):
        store.load(corpus, acoustic="fbank40", align="proportional")
    sf.write(corpus[1].audio, tone(0.5), 16000)  # fixed: the next run does just this one
    assert store.extract(corpus, ["fbank40"], align="proportional", progress=False).computed == 1


def test_words_without_audio_come_from_the_transcript(tmp_path, vectors):
    utts = [Utterance(id="t0", audio=None, speaker="a", label="x", original_label="x", transcript="Door number two!")]
    store = FeatureStore(tmp_path / "store")
    report = store.extract(utts, [vectors], align="auto", progress=False)
    assert report.align_sources == {"text": 1}
    item, = store.load(utts, words=vectors, align="auto")
    assert item.words == ["door", "number", "two"] and item.word_times is None
    np.testing.assert_array_equal(item.word_vectors[2], [1, 1, 0])


def test_written_words_are_stored_apart_from_the_normalised_ones(tmp_path, vectors):
    utts = [Utterance(id="t0", audio=None, speaker="a", label="x", original_label="x", transcript="Door number two!")]
    store = FeatureStore(tmp_path / "store")
    store.extract(utts, [vectors], align="auto", progress=False)
    report = store.extract(utts, [vectors], align="written", progress=False)
    assert report.align_sources == {"written": 1}
    item, = store.load(utts, words=vectors, align="written")
    assert item.words == ["Door", "number", "two", "!"] and item.word_times is None
    assert item.align_source == "written" and len(item.word_vectors) == 4
    assert store.load(utts, words=vectors, align="auto")[0].words == ["door", "number", "two"]


def test_unknown_feature_names_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown feature 'mfcc'"):
        split_features(["fbank40", "mfcc"])
    assert split_features(["fbank40", "minilm", "fbank40", " "]) == (["fbank40"], ["minilm"])
    with pytest.raises(ConfigError):
        FeatureStore(tmp_path).load([], acoustic="mfcc")


def test_two_workers_store_the_same_values_as_one(tmp_path):
    corpus = make_corpus(tmp_path)
    serial, parallel = FeatureStore(tmp_path / "a"), FeatureStore(tmp_path / "b")
    serial.extract(corpus, ["fbank40"], align="proportional", workers=1, progress=False)
    report = parallel.extract(corpus, ["fbank40"], align="proportional", workers=2, progress=False)
    assert report.computed == 3 and not report.failures and report.workers == 2
    for a, b in zip(serial.load(corpus, "fbank40", align="proportional"),
                    parallel.load(corpus, "fbank40", align="proportional")):
        np.testing.assert_array_equal(a.acoustic, b.acoustic)
        np.testing.assert_array_equal(a.word_times, b.word_times)


def test_cli_extract_fills_the_store_and_reports(tmp_path, vectors):
    from typer.testing import CliRunner

    from emofuse.cli import app

    manifest = make_corpus(tmp_path).write(tmp_path / "m.jsonl")
    runner = CliRunner()
    args = ["extract", str(manifest), "--features", f"fbank40,{vectors}", "--align", "proportional",
            "--out", str(tmp_path / "store"), "--workers", "0", "--no-progress"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "3 processed" in result.output and "proportional 3" in result.output
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and "3 already complete" in result.output
    bad = runner.invoke(app, ["extract", str(manifest), "--features", "mfcc", "--out", str(tmp_path / "s")])
    assert isinstance(bad.exception, ConfigError)


def test_cli_exits_1_when_every_utterance_fails(tmp_path):
    from typer.testing import CliRunner

    from emofuse.cli import app

    corpus = make_corpus(tmp_path, n=2)
    for utt in corpus:
        Path(utt.audio).write_bytes(b"junk")
    manifest = corpus.write(tmp_path / "m.jsonl")
    result = CliRunner().invoke(app, ["extract", str(manifest), "--features", "fbank40", "--align", "none",
                                      "--out", str(tmp_path / "store"), "--no-progress"])
    assert result.exit_code == 1 and "2 with failures" in result.output


def test_ravdess_through_the_store_with_forced_alignment_and_minilm(tmp_path, ravdess_root):
    statements = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}
    names = ["03-01-05-01-01-01-01", "03-01-04-01-02-02-02"]
    corpus = [
        Utterance(id=n, audio=str(ravdess_root / f"Actor_{n[-2:]}" / f"{n}.flac"), speaker=n[-2:],
                  label="x", original_label="x", transcript=statements[n.split("-")[4]])
        for n in names
    ]
    store = FeatureStore(tmp_path / "store")
    report = store.extract(corpus, ["compare_lld", "minilm"], align="forced", progress=False)
    assert not report.failures and report.align_sources == {"forced": 2}
    items = store.load(corpus, acoustic="compare_lld", words="minilm", align="auto")  # auto resolves to forced
    for item, n in zip(items, names):
        assert item.align_source == "forced" and len(item.words) == 6
        assert item.words[0] == ("kids" if n.split("-")[4] == "01" else "dogs")
        assert item.word_vectors.shape == (6, 384) and item.acoustic.shape[1] == 130
        inside = np.zeros(len(item.acoustic), bool)
        for start, end in item.word_times:
            inside[int(np.floor(start / 0.01 + 1e-4)) : int(np.ceil(end / 0.01 - 1e-4))] = True
        np.testing.assert_array_equal(item.speech_mask, inside)


def test_entry_names_stay_those_earlier_versions_wrote():
    # Stores extracted before the store was split into layout/extract/load must still be found:
    # a change here means every existing store is recomputed (bump CODE_VERSION on purpose).
    store = FeatureStore("/store")
    assert store.frames_dir("fbank40").name == "fbank40-59a07c0b75ee"
    assert store.vad_dir().name == "energy-97480bfb62d0"
    assert store.align_dir("text").name == "text-d72283597f4f"
    utt = Utterance("x/1", "/a.wav", "s", "angry", "angry", transcript="hi there", words=[Word("hi", 0, 0.2)])
    assert utterance_key(utt, with_text=False) == "x_1-90adb07eebfe"
    assert utterance_key(utt, with_text=True) == "x_1-87f9aa4df701"
