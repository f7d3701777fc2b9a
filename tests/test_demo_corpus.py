"""The built-in demo corpus: shipped, balanced, speaker-exclusive-ready and built so that
words and voice each decide only part of it (issue 9, part 1)."""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import emofuse.demo as demo
from emofuse.corpora.base import Corpus
from emofuse.corpora.labels import get_label_set
from emofuse.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
EMOTIONS = ("angry", "happy", "neutral", "sad")


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return demo.load_demo_corpus()


@pytest.fixture(scope="module")
def generator():
    """The generator script as a module (its plan needs no espeak-ng)."""
    spec = importlib.util.spec_from_file_location("make_demo_corpus", ROOT / "scripts" / "make_demo_corpus.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def test_demo_manifest_is_inside_the_package():
    path = demo.corpus_path()
    assert path.name == "manifest.jsonl"
    assert path.is_relative_to(Path(demo.__file__).parent)


def test_demo_manifest_loads_as_a_corpus(corpus):
    assert corpus.name == "emofuse-demo"
    assert len(corpus) == 288
    labels = get_label_set(demo.LABEL_SET)
    assert all(labels.map(u.original_label) == u.label for u in corpus)
    assert all(u.transcript and u.meta["kind"] in demo.KINDS for u in corpus)


def test_every_label_has_the_same_number_of_utterances(corpus):
    counts = Counter(corpus.labels)
    assert set(counts) == set(EMOTIONS)
    assert len(set(counts.values())) == 1


def test_every_speaker_has_every_label_and_kind_equally_often(corpus):
    cells = Counter((u.speaker, u.label, u.meta["kind"]) for u in corpus)
    speakers = set(corpus.speakers)
    assert len(cells) == len(speakers) * len(EMOTIONS) * len(demo.KINDS)
    assert set(cells.values()) == {3}


def test_at_least_four_speakers_each_a_distinct_voice(corpus):
    voices = defaultdict(set)
    for u in corpus:
        voices[u.speaker].add(u.meta["voice"])
    assert len(voices) >= 4
    assert all(len(v) == 1 for v in voices.values())
    assert len({next(iter(v)) for v in voices.values()}) == len(voices)
    assert {u.meta["gender"] for u in corpus} == {"female", "male"}


def test_audio_files_are_16khz_mono_non_silent_and_short(corpus):
    for u in corpus:
        info = sf.info(u.audio)
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16"), u.audio
        y, _ = sf.read(u.audio, dtype="float32")
        assert 0.3 < len(y) / 16000 < 3.5, u.audio
        assert np.sqrt(np.mean(y**2)) > 0.005, f"{u.audio} is silent"
        assert np.abs(y).max() < 1.0, f"{u.audio} clips"


def test_demo_audio_fits_in_15_mb():
    audio = list((demo.corpus_path().parent / "audio").glob("*.flac"))
    assert len(audio) == 288  # no stale files shipped beside the manifest's
    assert sum(p.stat().st_size for p in audio) <= 15 * 1024 * 1024


def test_ambiguous_phrases_carry_no_label_within_any_speaker(corpus):
    said = defaultdict(list)
    for u in corpus:
        if u.meta["kind"] == "acoustic":
            said[(u.speaker, u.transcript)].append(u.label)
    assert said
    assert all(sorted(labels) == sorted(EMOTIONS) for labels in said.values())


def test_emotional_sentences_each_belong_to_one_emotion(corpus):
    labels_of = defaultdict(set)
    for u in corpus:
        if u.meta["kind"] != "acoustic":
            labels_of[u.transcript].add(u.label)
    assert all(len(labels) == 1 for labels in labels_of.values())


def test_voice_carries_the_emotion_only_where_the_design_says(corpus):
    """Loudness and duration follow the label in acoustic utterances; lexical ones all get a
    neutral voice, so their loudness does not separate angry from sad."""

    def rms_db(u):
        y, _ = sf.read(u.audio, dtype="float32")
        return 20 * np.log10(np.sqrt(np.mean(y**2)))

    def mean(kind, label, measure):
        return np.mean([measure(u) for u in corpus if u.meta["kind"] == kind and u.label == label])

    assert mean("acoustic", "angry", rms_db) > mean("acoustic", "sad", rms_db) + 6
    duration = lambda u: sf.info(u.audio).duration  # noqa: E731
    assert mean("acoustic", "sad", duration) > mean("acoustic", "angry", duration)
    assert abs(mean("lexical", "angry", rms_db) - mean("lexical", "sad", rms_db)) < 3
    assert {u.meta["prosody_emotion"] for u in corpus if u.meta["kind"] == "lexical"} == {"neutral"}


def test_every_demo_word_is_in_the_alignment_dictionary(corpus):
    """The demo runs forced alignment: an unknown word would lose its timing."""
    from pocketsphinx import Decoder

    decoder = Decoder(samprate=16000, bestpath=False, logfn="/dev/null")
    words = {w for u in corpus for w in re.findall(r"[a-z']+", u.transcript.lower())}
    unknown = sorted(w for w in words if decoder.lookup_word(w) is None)
    assert not unknown


def test_manifest_is_what_the_seeded_generator_plans(corpus, generator):
    specs = generator.plan(generator.SEED)
    assert [s.id for s in specs] == [u.id for u in corpus]
    for spec, u in zip(specs, corpus):
        assert (spec.voice.speaker, spec.label, spec.kind, spec.text) == (u.speaker, u.label, u.meta["kind"], u.transcript)
        assert all(u.meta[key] == value for key, value in spec.prosody.items())


def test_shipped_readme_is_what_the_generator_writes(generator):
    shipped = (demo.corpus_path().parent / "README.md").read_text(encoding="utf-8")
    assert shipped == generator.readme(generator.plan(generator.SEED))


@pytest.fixture(scope="module")
def espeak_version(generator) -> str:
    """The installed espeak-ng release, when both tools are the releases that made the shipped
    audio; otherwise a skip that says which tool differs (a user's tools never fail the suite)."""
    missing = [tool for tool in generator.MADE_WITH if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"regenerating needs {' and '.join(missing)} (generation-time tools, not runtime dependencies)")
    installed = generator.tool_versions()
    for tool, made in generator.MADE_WITH.items():
        if not generator.same_release(installed[tool], made):
            pytest.skip(
                f"{tool} {installed[tool] or '(version unreadable)'} is installed; the shipped demo audio was made "
                f"with {tool} {made}, and another release synthesises different audio"
            )
    return installed["espeak-ng"]


@pytest.mark.parametrize("speaker", [f"s0{i}" for i in range(1, 9)])
def test_generator_reproduces_a_shipped_file(corpus, generator, espeak_version, speaker, tmp_path):
    """One utterance per voice, regenerated and read back as the shipped FLAC is. Voices without
    breath noise must match to 60 dB SNR (bit for bit on Debian 12); breath voices, whose
    noise comes from the C library's rand(), must match in duration and long-term spectrum
    (tolerances and measured figures in scripts/make_demo_corpus.py)."""
    spec = next(s for s in generator.plan(generator.SEED) if s.voice.speaker == speaker and s.kind == "acoustic")
    generator.write_flac(tmp_path / "again.flac", generator.synthesise(spec, str(tmp_path), espeak_version))
    again, _ = sf.read(tmp_path / "again.flac", dtype="float32")
    shipped, _ = sf.read(next(u.audio for u in corpus if u.id == spec.id), dtype="float32")
    assert generator.reproduction_problem(spec.voice, again, shipped) is None, spec.id


def test_reproduction_tolerance_catches_a_changed_generator(corpus, generator):
    """The tolerances see a 2 dB gain change and 50 ms cut off, in every voice."""
    for voice in generator.VOICES:
        shipped, _ = sf.read(next(u.audio for u in corpus if u.speaker == voice.speaker), dtype="float32")
        assert generator.reproduction_problem(voice, shipped.copy(), shipped) is None
        assert generator.reproduction_problem(voice, shipped * 10 ** (2 / 20), shipped) is not None, voice.speaker
        assert generator.reproduction_problem(voice, shipped[:-800], shipped) is not None, voice.speaker


def test_missing_demo_audio_gives_a_clear_error(tmp_path, monkeypatch, corpus):
    manifest = tmp_path / "manifest.jsonl"
    Corpus([corpus[0]], name="emofuse-demo").write(manifest)  # absolute path to the real file
    text = manifest.read_text().replace(corpus[0].audio, "audio/gone.flac")
    manifest.write_text(text)
    monkeypatch.setattr(demo, "corpus_path", lambda: manifest)
    with pytest.raises(DataError, match="gone.flac.*demo audio file missing"):
        demo.load_demo_corpus()
