#!/usr/bin/env python
"""Generate the built-in demo corpus: synthetic emotional speech where words and voice
matter to different degrees (issue 9, part 1).

Eight espeak-ng voices (voice + variant = one speaker) each speak 36 short English
utterances, 9 per emotion (angry, happy, neutral, sad), of three kinds:

- ``lexical``  — the words carry the emotion ("I really miss my dog"); the voice gives little
  away: its prosody is drawn from the neutral distribution (widened), whatever the label.
- ``acoustic`` — the words are ambiguous ("oh my gosh", "yeah, of course"); every speaker
  says 3 such phrases, each with all four emotions (as RAVDESS); only the prosody decides.
- ``both``     — emotional words spoken with the label's own prosody.

Prosody per emotion is a set of overlapping Gaussian distributions over espeak-ng's pitch
level (``-p``), pitch range (SSML ``<prosody range>``), rate (``-s``, words per minute),
word gap (``-g``, 10 ms units), loudness (``-a`` units, applied as a gain) and vocal effort
(spectral tilt: a sox treble shelf above 1.5 kHz), plus a fixed offset per speaker, so the
voice alone is not enough either. A lexical-only model cannot resolve the acoustic
third, an acoustic-only model cannot resolve the lexical third: fusion is needed to get
all three.

The result (16 kHz mono 16-bit FLAC + ``manifest.jsonl`` readable by
``emofuse.corpora.Corpus.read``) is committed under ``src/emofuse/demo/data`` so that
nothing needs espeak-ng at run time. Needs ``espeak-ng`` on PATH to generate
and ``sox`` (``apt-get install espeak-ng sox``); the seed makes it reproducible.

    python scripts/make_demo_corpus.py                # (re)generate into src/emofuse/demo/data
    python scripts/make_demo_corpus.py --check        # generate, then the cheap fusion check
    python scripts/make_demo_corpus.py --check-only   # check the committed corpus only

The check fits logistic regressions with speaker-exclusive cross-validation (one speaker
out): on prosodic statistics (pyin F0, RMS, pauses, spectral tilt, duration), on a bag of
words, on both concatenated (early fusion), and multiplies the two unimodal posteriors
(late fusion); fusion should clearly beat both single modalities.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from emofuse.corpora.base import Corpus, Utterance  # noqa: E402
from emofuse.io import atomic_path, atomic_write_text  # noqa: E402

SEED = 9
SAMPLE_RATE = 16000
ESPEAK_RATE = 22050  # espeak-ng's native output rate
# espeak-ng clips loud voices inside its int16 output. So it always speaks at amplitude 50
# and the wanted amplitude becomes a linear gain afterwards (`-a` is linear: checked), scaled
# so the loudest voice stays below full scale: gain = amplitude / 50 * OUTPUT_SCALE.
ESPEAK_AMPLITUDE = 50
OUTPUT_SCALE = 0.27
CORPUS_NAME = "emofuse-demo"
DEFAULT_OUT = ROOT / "src" / "emofuse" / "demo" / "data"
EMOTIONS = ("angry", "happy", "neutral", "sad")
KINDS = ("lexical", "acoustic", "both")
PER_KIND = 3  # utterances per speaker, emotion and kind: 8 x 4 x 3 x 3 = 288


@dataclass(frozen=True)
class Voice:
    speaker: str
    voice: str  # espeak-ng voice[+variant]
    gender: str
    accent: str
    synth: str = "formant"
    # The variant's voice file has a `breath` line: espeak-ng adds aspiration noise drawn
    # from a random generator (the C library's rand() in 1.51), so only the noise's spectrum,
    # not its samples, is fixed by the plan.
    breath: bool = False


# `en+f2` not `en-gb+f2`: espeak-ng 1.51 ignores the variant after the `en-gb` alias.
VOICES = (
    Voice("s01", "en-us", "male", "American"),
    Voice("s02", "en+f2", "female", "British", breath=True),
    Voice("s03", "en-us+m3", "male", "American"),
    Voice("s04", "en-gb-x-rp+f4", "female", "British (received pronunciation)"),
    Voice("s05", "en-us-nyc+m2", "male", "American (New York City)"),
    Voice("s06", "en-gb-scotland+f3", "female", "Scottish", breath=True),
    Voice("s07", "en+klatt4", "male", "British", synth="klatt"),
    Voice("s08", "en-us+f5", "female", "American", breath=True),
)

# Prosody per emotion: (mean, sd) in espeak-ng units. Arousal (angry, happy vs sad) shows
# in rate, loudness and range; angry and happy differ mostly in pitch level and loudness,
# neutral and sad in pitch, range and pauses. The sds make neighbours overlap.
PROSODY = {
    #          pitch -p   range %   rate wpm   amplitude  word gap (10 ms)  tilt (dB above 1.5 kHz)
    "angry": {"pitch": (55, 8), "range": (150, 30), "rate": (210, 14), "amplitude": (165, 14), "gap": (0.3, 0.8), "tilt": (6, 3)},
    "happy": {"pitch": (80, 8), "range": (220, 30), "rate": (180, 14), "amplitude": (115, 14), "gap": (0.5, 0.8), "tilt": (2, 3)},
    "neutral": {"pitch": (45, 8), "range": (90, 25), "rate": (160, 14), "amplitude": (82, 12), "gap": (1.0, 1.0), "tilt": (0, 3)},
    "sad": {"pitch": (22, 8), "range": (40, 20), "rate": (125, 14), "amplitude": (52, 10), "gap": (4.0, 1.5), "tilt": (-5, 3)},
}
# Lexical utterances: "neutral" = a voice that gives little away (the neutral distribution,
# sd widened by LEXICAL_SPREAD); "random" = the prosody of a random emotion.
LEXICAL_VOICE = "neutral"
LEXICAL_SPREAD = 1.5
LIMITS = {"pitch": (5, 95), "range": (10, 280), "rate": (110, 240), "amplitude": (35, 190), "gap": (0, 8), "tilt": (-12, 12)}
# How far one speaker's habitual prosody sits from the corpus mean (sd of a per-speaker offset).
SPEAKER_SPREAD = {"pitch": 3.0, "range": 8.0, "rate": 5.0, "amplitude": 6.0, "gap": 0.3, "tilt": 1.0}

# Words that decide: 16 per emotion; each speaker says 6 of them (3 lexical, 3 both) and
# each sentence is said by 3 speakers. No '!' or '?': espeak-ng would change the melody.
EMOTIONAL_SENTENCES = {
    "angry": (
        "I am so angry at you",
        "This is completely unacceptable",
        "Stop lying to me",
        "You ruined everything",
        "Get out of my room now",
        "How dare you talk to me like that",
        "I am sick of your excuses",
        "That was a stupid thing to do",
        "Leave me alone, I am furious",
        "You never listen to me",
        "This is outrageous",
        "I hate it when you do that",
        "Do not ever touch my things again",
        "You broke my car and you lied about it",
        "I have had enough of this nonsense",
        "Shut up and get out",
    ),
    "happy": (
        "I love this so much",
        "What a wonderful surprise",
        "We won the big game",
        "This is the best day ever",
        "I am so happy for you",
        "Thank you, this is great",
        "I got the job",
        "We are going on holiday tomorrow",
        "That party was fantastic",
        "I am thrilled to see you",
        "You made my day",
        "Everything worked out perfectly",
        "My sister is having a baby",
        "I passed all my exams",
        "This cake is delicious",
        "We are getting married in June",
    ),
    "neutral": (
        "The meeting is at three",
        "Please close the window",
        "The bus leaves at noon",
        "I bought some bread today",
        "The report is on the desk",
        "Turn left at the corner",
        "The store opens at nine",
        "We need more paper for the printer",
        "The train was on time",
        "My office is on the second floor",
        "Put the box on the table",
        "The file has four pages",
        "The keys are in the drawer",
        "He takes the early bus on Monday",
        "The library closes at six",
        "Write your name at the top",
    ),
    "sad": (
        "I really miss my dog",
        "Nobody came to my party",
        "I lost my job today",
        "She is gone forever",
        "I feel so alone",
        "Everything went wrong again",
        "I failed the exam",
        "My grandmother passed away",
        "I cried all night",
        "We had to say goodbye",
        "I have no friends here",
        "It hurts so much",
        "He never called me back",
        "Our old house is gone",
        "I miss the way things were",
        "Nobody remembers my birthday",
    ),
}

# Words that do not decide: each speaker says 3 of them, each with all four emotions.
AMBIGUOUS_PHRASES = (
    "oh my gosh",
    "yeah, of course",
    "really",
    "I see",
    "that's it then",
    "so this is it",
    "well, here we go again",
    "look at that",
    "it is what it is",
    "you did it",
    "okay, fine",
    "I can't believe it",
)


@dataclass
class Spec:
    """One utterance to synthesise: what is said, how, and why (its kind)."""

    id: str
    voice: Voice
    label: str
    kind: str
    text: str
    prosody_emotion: str
    prosody: dict


def _draw_prosody(rng: np.random.Generator, emotion: str, offset: dict, spread: float = 1.0) -> dict:
    values = {}
    for key, (mean, sd) in PROSODY[emotion].items():
        low, high = LIMITS[key]
        value = float(np.clip(rng.normal(mean + offset[key], sd * spread), low, high))
        values[key] = round(value, 1) if key == "tilt" else int(round(value))
    return values


def plan(seed: int = SEED) -> list[Spec]:
    """Decide every utterance (words, label, prosody) before synthesising any of them.

    Balanced by construction: every speaker has 3 utterances of each (emotion, kind);
    every emotional sentence is said by 3 speakers; every speaker says 3 ambiguous
    phrases, each with all four emotions (each phrase by 2 speakers); the prosody of lexical utterances is drawn for each
    emotion equally often per speaker, independent of the label.
    """
    rng = np.random.default_rng(seed)
    n_pool = len(AMBIGUOUS_PHRASES)
    assert n_pool == len(EMOTIONS) * PER_KIND
    pools = {e: [EMOTIONAL_SENTENCES[e][i] for i in rng.permutation(len(EMOTIONAL_SENTENCES[e]))] for e in EMOTIONS}
    phrases = [AMBIGUOUS_PHRASES[i] for i in rng.permutation(n_pool)]
    specs: list[Spec] = []
    for s, voice in enumerate(VOICES):
        offset = {key: float(rng.normal(0.0, sd)) for key, sd in SPEAKER_SPREAD.items()}
        # A window of 6 consecutive pool entries, shifted by 6 per speaker: with 16
        # sentences and 8 speakers every sentence is used exactly 3 times.
        per_emotion_words = {}
        for e in EMOTIONS:
            pool = pools[e]
            window = [pool[(2 * PER_KIND * s + j) % len(pool)] for j in range(2 * PER_KIND)]
            order = rng.permutation(len(window))
            per_emotion_words[e] = [window[i] for i in order]
        # Ambiguous phrases as in RAVDESS: each speaker says 3 phrases, each with all four
        # emotions, so the words are uninformative within every speaker and hence within
        # every training fold (a corpus-wide balance would make a held-out speaker's
        # phrases anti-predictive under one-speaker-out CV). 12 phrases, 2 speakers each.
        mine = [phrases[(PER_KIND * s + j) % n_pool] for j in range(PER_KIND)]
        ambiguous = {e: list(mine) for e in EMOTIONS}
        # The voice of lexical utterances: each emotion's prosody 3 times, shuffled.
        random_voices = list(np.repeat(EMOTIONS, PER_KIND))
        random_voices = [random_voices[i] for i in rng.permutation(len(random_voices))]
        n = 0
        for e in EMOTIONS:
            for kind in KINDS:
                for j in range(PER_KIND):
                    spread = 1.0
                    if kind == "lexical":
                        text, prosody_emotion = per_emotion_words[e][j], str(random_voices.pop())
                        if LEXICAL_VOICE == "neutral":
                            prosody_emotion, spread = "neutral", LEXICAL_SPREAD
                    elif kind == "both":
                        text, prosody_emotion = per_emotion_words[e][PER_KIND + j], e
                    else:
                        text, prosody_emotion = ambiguous[e][j], e
                    n += 1
                    specs.append(
                        Spec(
                            id=f"{voice.speaker}_{n:02d}_{e}_{kind}",
                            voice=voice,
                            label=e,
                            kind=kind,
                            text=text,
                            prosody_emotion=prosody_emotion,
                            prosody=_draw_prosody(rng, prosody_emotion, offset, spread),
                        )
                    )
    return specs


def ssml(text: str, prosody: dict) -> str:
    """Pitch range through SSML (espeak-ng has no command-line option for it)."""
    return f'<speak><prosody range="{prosody["range"]}%">{text}</prosody></speak>'


# The releases that made the shipped audio. Another espeak-ng release synthesises different
# audio (phoneme data, timing, its own noise generator), so the shipped files can only be
# compared with what these releases make.
MADE_WITH = {"espeak-ng": "1.51", "sox": "14.4.2"}


def tool_versions() -> dict[str, str | None]:
    """The installed espeak-ng and sox releases ("1.51", "14.4.2"); None where a tool is
    missing or its version line cannot be read."""
    versions: dict[str, str | None] = {}
    for tool in MADE_WITH:
        try:
            line = subprocess.run([tool, "--version"], check=True, capture_output=True, text=True).stdout
        except (OSError, subprocess.CalledProcessError):
            versions[tool] = None
            continue
        found = re.search(r"(\d+\.\d+(?:\.\d+)?)", line)
        versions[tool] = found.group(1) if found else None
    return versions


def same_release(installed: str | None, made_with: str) -> bool:
    """Same release at the precision `made_with` gives: espeak-ng 1.51 matches "1.51"."""
    return installed is not None and installed.split(".")[: len(made_with.split("."))] == made_with.split(".")


def espeak_command(spec: Spec, wav_path: str, espeak_version: str | None = None) -> list[str]:
    p = spec.prosody
    # espeak-ng >= 1.52 seeds its noise generator from the clock unless -D (deterministic)
    # is given; 1.51 has no -D (it would exit without writing) and draws from the C
    # library's rand(), unseeded, so it repeats itself on one C library.
    deterministic = ["-D"] if espeak_version and tuple(map(int, espeak_version.split(".")[:2])) >= (1, 52) else []
    return [
        "espeak-ng", *deterministic, "-m", "-v", spec.voice.voice,
        "-p", str(p["pitch"]), "-s", str(p["rate"]), "-a", str(ESPEAK_AMPLITUDE), "-g", str(p["gap"]),
        "-w", wav_path, ssml(spec.text, p),
    ]


def trim(y: np.ndarray, sr: int, pad_s: float = 0.05, floor_db: float = -45.0) -> np.ndarray:
    """Cut leading/trailing silence below `floor_db` (relative to the peak), keeping a pad."""
    hop = int(0.01 * sr)
    n = len(y) // hop
    rms = np.sqrt((y[: n * hop].reshape(n, hop) ** 2).mean(axis=1) + 1e-12)  # (n,)
    loud = np.nonzero(20 * np.log10(rms / rms.max()) > floor_db)[0]
    if loud.size == 0:
        return y
    pad = int(pad_s * sr)
    return y[max(0, loud[0] * hop - pad) : min(len(y), (loud[-1] + 1) * hop + pad)]


def synthesise(spec: Spec, workdir: str, espeak_version: str | None = None) -> np.ndarray:
    wav = os.path.join(workdir, "tmp.wav")
    subprocess.run(espeak_command(spec, wav, espeak_version), check=True, capture_output=True)
    if not os.path.exists(wav):
        raise RuntimeError(f"{spec.id}: espeak-ng wrote no audio: {' '.join(espeak_command(spec, wav, espeak_version))}")
    # Vocal effort as spectral tilt: a high shelf above 1.5 kHz, written as float (no clipping).
    # -D: no dither. SoX dithers (fresh noise on every run unless -R) only when it lowers the
    # bit depth, which a 32-bit float output never does; -D keeps it so if the output changes.
    tilted = os.path.join(workdir, "tilted.wav")
    subprocess.run(
        ["sox", "-D", wav, "-e", "floating-point", "-b", "32", tilted, "treble", str(spec.prosody["tilt"]), "1500"],
        check=True, capture_output=True,
    )
    y, sr = sf.read(tilted, dtype="float64")
    if sr != ESPEAK_RATE:
        raise RuntimeError(f"espeak-ng wrote {sr} Hz, expected {ESPEAK_RATE}")
    y = resample_poly(y, SAMPLE_RATE, ESPEAK_RATE)  # 22050 -> 16000 Hz (ratio 320/441)
    y = trim(y, SAMPLE_RATE) * (spec.prosody["amplitude"] / ESPEAK_AMPLITUDE * OUTPUT_SCALE)
    if np.abs(y).max() >= 1.0:
        raise RuntimeError(f"{spec.id}: clipped at amplitude {spec.prosody['amplitude']}; lower OUTPUT_SCALE")
    return y.astype(np.float32)


def write_flac(path: Path, y: np.ndarray) -> None:
    with atomic_path(path, suffix=".flac") as tmp:
        sf.write(tmp, y, SAMPLE_RATE, format="FLAC", subtype="PCM_16")


def readme(specs: list[Spec]) -> str:
    lines = [
        "# emofuse demo corpus (generated — do not edit)",
        "",
        "Synthetic English emotional speech made by `scripts/make_demo_corpus.py` "
        f"(seed {SEED}) with espeak-ng; 16 kHz mono 16-bit FLAC. Labels: "
        + ", ".join(EMOTIONS) + ".",
        "",
        f"{len(specs)} utterances: {len(VOICES)} speakers x {len(EMOTIONS)} emotions x "
        f"{len(KINDS)} kinds x {PER_KIND}.",
        "",
        "- `lexical`: the words carry the emotion; the prosody is "
        + ("neutral (widened), whatever the label." if LEXICAL_VOICE == "neutral" else "that of a random emotion."),
        "- `acoustic`: ambiguous words shared by all emotions, only the prosody carries it.",
        "- `both`: words and prosody agree.",
        "",
        "| speaker | espeak-ng voice | gender | accent | synthesiser |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {v.speaker} | `{v.voice}` | {v.gender} | {v.accent} | {v.synth} |" for v in VOICES]
    lines += [
        "",
        "Prosody per emotion, (mean, sd) in espeak-ng units (pitch `-p`, range % via SSML, rate",
        "`-s` wpm, amplitude `-a` applied as a gain, word gap `-g` in 10 ms, tilt = sox treble dB",
        "at 1.5 kHz), before a per-speaker offset:",
        "",
    ]
    lines += [f"- {e}: " + json.dumps(PROSODY[e]) for e in EMOTIONS]
    breath = ", ".join(v.speaker for v in VOICES if v.breath)
    lines += [
        "",
        "## Regenerating",
        "",
        f"Made with espeak-ng {MADE_WITH['espeak-ng']} and SoX {MADE_WITH['sox']} (Debian 12); with those",
        "releases on glibc every file regenerates bit for bit. SoX does not dither (`-D`; its output",
        f"is 32-bit float). The breath voices ({breath}) add noise from the C library's `rand()`",
        "inside espeak-ng 1.51, so another C library gives other noise samples with the same",
        "spectrum; espeak-ng 1.52 seeds its own generator from the clock unless `-D` is given, which",
        "the generator passes. `tests/test_demo_corpus.py` regenerates one file per voice when both",
        "tools are installed: 60 dB SNR for voices without noise; for breath voices the duration within",
        "30 ms and the long-term mel spectrum within 1 dB RMS. Other releases are skipped: they",
        "synthesise different audio.",
    ]
    return "\n".join(lines) + "\n"


def generate(out: Path, seed: int = SEED) -> Corpus:
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: apt-get install espeak-ng sox (needed to generate only)")
    versions = tool_versions()
    for tool, made in MADE_WITH.items():
        if not same_release(versions[tool], made):
            print(f"warning: {tool} {versions[tool]} installed; the shipped audio was made with {made}", file=sys.stderr)
    specs = plan(seed)
    audio_dir = out / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    wanted = {f"{s.id}.flac" for s in specs}
    for stale in audio_dir.glob("*.flac"):
        if stale.name not in wanted:
            stale.unlink()
    utterances, peak = [], 0.0
    with tempfile.TemporaryDirectory() as workdir:
        for i, spec in enumerate(specs, start=1):
            y = synthesise(spec, workdir, versions["espeak-ng"])
            peak = max(peak, float(np.abs(y).max()))
            write_flac(audio_dir / f"{spec.id}.flac", y)
            utterances.append(
                Utterance(
                    id=spec.id,
                    audio=f"audio/{spec.id}.flac",
                    speaker=spec.voice.speaker,
                    label=spec.label,
                    original_label=spec.label,
                    transcript=spec.text,
                    meta={
                        "kind": spec.kind,
                        "voice": spec.voice.voice,
                        "gender": spec.voice.gender,
                        "accent": spec.voice.accent,
                        "synth": spec.voice.synth,
                        "prosody_emotion": spec.prosody_emotion,
                        **spec.prosody,
                        "duration": round(len(y) / SAMPLE_RATE, 3),
                        "seed": seed,
                    },
                )
            )
            if i % 48 == 0:
                print(f"  {i}/{len(specs)} utterances", flush=True)
    corpus = Corpus(utterances, name=CORPUS_NAME)
    corpus.write(out / "manifest.jsonl")
    atomic_write_text(out / "README.md", readme(specs))
    size = sum(p.stat().st_size for p in audio_dir.glob("*.flac"))
    total = sum(u.meta["duration"] for u in utterances)
    print(f"wrote {len(utterances)} utterances, {total:.0f} s of audio, {size / 1e6:.2f} MB FLAC to {out}; peak {peak:.3f}")
    return corpus


# --- how close a regenerated file is to the shipped one ----------------------------------
# With the releases in MADE_WITH (Debian 12: espeak-ng 1.51+dfsg-10+deb12u2, SoX
# 14.4.2+git20190427-3.5, glibc, x86-64) all 288 files regenerate bit for bit. Voices without
# breath noise draw no random numbers, so they must still match up to 16-bit rounding. The
# breath voices' noise comes from the C library's rand(): another C library (or a clock-seeded
# generator) draws other noise, which moves most samples (15,501 of 18,560 in s02_05, up to
# 620, when rand() is reseeded) but not the spectrum or the timing.
EXACT_SNR_DB = 60.0  # voices without noise: signal-to-difference ratio
# Breath voices: RMS dB difference of the long-term mel spectra. Over 216 other noise draws
# (every s02/s06/s08 file, rand() reseeded twice) the worst was 0.67 dB (a short s08 file).
BREATH_SPECTRUM_DB = 1.0
BREATH_DURATION_S = 0.03  # breath voices: the silence trim may move by a 10 ms hop or two


def snr_db(regenerated: np.ndarray, shipped: np.ndarray) -> float:
    """Shipped-signal energy over difference energy, in dB (inf when identical)."""
    noise = float(np.sum((regenerated.astype(np.float64) - shipped) ** 2))
    return float("inf") if noise == 0 else 10 * np.log10(float(np.sum(shipped.astype(np.float64) ** 2)) / noise)


def long_term_spectrum_db(y: np.ndarray, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Mean power in 40 mel bands over the whole file, in dB: (40,). Noise of one draw or
    another averages out; tilt, gain, pitch and voice do not."""
    import librosa

    mel = librosa.feature.melspectrogram(y=y.astype(np.float32), sr=sr, n_fft=400, hop_length=160, n_mels=40)  # (40, frames)
    return 10 * np.log10(mel.mean(axis=1) + 1e-10)


def reproduction_problem(voice: Voice, regenerated: np.ndarray, shipped: np.ndarray) -> str | None:
    """Why `regenerated` is not the shipped file within this voice's tolerance, or None.
    Both are float samples at SAMPLE_RATE read back from 16-bit FLAC."""
    if not voice.breath:
        if len(regenerated) != len(shipped):
            return f"{len(regenerated)} samples, shipped {len(shipped)}"
        snr = snr_db(regenerated, shipped)
        return None if snr >= EXACT_SNR_DB else f"SNR {snr:.1f} dB against the shipped file (< {EXACT_SNR_DB:g})"
    duration = abs(len(regenerated) - len(shipped)) / SAMPLE_RATE
    if duration > BREATH_DURATION_S:
        return f"duration differs by {duration:.3f} s (> {BREATH_DURATION_S:g})"
    distance = float(np.sqrt(np.mean((long_term_spectrum_db(regenerated) - long_term_spectrum_db(shipped)) ** 2)))
    if distance > BREATH_SPECTRUM_DB:
        return f"long-term spectrum differs by {distance:.2f} dB RMS (> {BREATH_SPECTRUM_DB:g})"
    return None


# --- the cheap fusion check (not a CI test: it takes a minute or two) -------------------


def prosodic_statistics(path: str) -> np.ndarray:
    """Utterance-level prosody: pyin F0 level/spread/range, RMS level/spread, pauses,
    voicing, spectral tilt (energy above vs below 1.5 kHz) and duration."""
    import librosa

    y, sr = sf.read(path, dtype="float32")
    # Coarse pyin settings (20 ms hop, 50 thresholds) keep the check near a minute.
    f0, voiced, _ = librosa.pyin(
        y, fmin=60, fmax=450, sr=sr, frame_length=800, hop_length=320, resolution=0.2, n_thresholds=50
    )
    f0 = f0[voiced & np.isfinite(f0)]
    semitones = 12 * np.log2(f0 / 100.0) if f0.size else np.zeros(1)
    rms_db = 20 * np.log10(librosa.feature.rms(y=y, frame_length=400, hop_length=320)[0] + 1e-5)
    active = rms_db > rms_db.max() - 30
    power = np.abs(librosa.stft(y, n_fft=512, hop_length=320)) ** 2  # (257, frames)
    high = np.fft.rfftfreq(512, 1 / sr) >= 1500
    n = min(power.shape[1], active.size)
    tilt = 10 * np.log10(power[high][:, :n][:, active[:n]].sum() / (power[~high][:, :n][:, active[:n]].sum() + 1e-9) + 1e-9)
    return np.array([
        semitones.mean(), semitones.std(), np.percentile(semitones, 90) - np.percentile(semitones, 10),
        rms_db[active].mean(), rms_db[active].std(), np.percentile(rms_db, 95),
        1.0 - active.mean(), voiced.mean(), tilt, len(y) / sr,
    ])


CHECK_C = 1.0  # inverse L2 strength of every logistic regression in the check


def check(out: Path) -> dict:
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold
    from sklearn.preprocessing import StandardScaler

    corpus = Corpus.read(out / "manifest.jsonl")
    print(f"extracting prosodic statistics of {len(corpus)} utterances (pyin) ...", flush=True)
    acoustic = np.stack([prosodic_statistics(u.audio) for u in corpus])  # (N, 10)
    texts = [u.transcript for u in corpus]
    y = np.array(corpus.labels)
    groups = np.array(corpus.speakers)
    kinds = np.array([u.meta["kind"] for u in corpus])
    names = ("acoustic", "lexical", "early fusion", "late fusion")
    predictions = {name: np.empty(len(y), dtype=object) for name in names}
    for train, test in GroupKFold(n_splits=len(set(groups))).split(acoustic, y, groups):
        scaler = StandardScaler().fit(acoustic[train])
        vectoriser = CountVectorizer(token_pattern=r"[a-z']+", binary=True).fit([texts[i] for i in train])
        words_train = vectoriser.transform([texts[i] for i in train]).toarray()
        words_test = vectoriser.transform([texts[i] for i in test]).toarray()
        views = {
            "acoustic": (scaler.transform(acoustic[train]), scaler.transform(acoustic[test])),
            "lexical": (words_train, words_test),
            "early fusion": (
                np.hstack([scaler.transform(acoustic[train]), words_train]),
                np.hstack([scaler.transform(acoustic[test]), words_test]),
            ),
        }
        log_probs = {}
        for name, (x_train, x_test) in views.items():
            model = LogisticRegression(C=CHECK_C, max_iter=2000).fit(x_train, y[train])
            predictions[name][test] = model.predict(x_test)
            log_probs[name] = model.predict_log_proba(x_test)  # (n_test, 4), classes sorted
        # Late fusion: the product of the two unimodal posteriors.
        classes = np.array(sorted(set(y[train])))
        predictions["late fusion"][test] = classes[(log_probs["acoustic"] + log_probs["lexical"]).argmax(axis=1)]
    results = {}
    print(f"\nspeaker-exclusive CV ({len(set(groups))} folds, one speaker out), accuracy (chance 0.25):")
    print(f"{'features':<13} {'all':>6} " + " ".join(f"{k:>9}" for k in KINDS))
    for name, pred in predictions.items():
        row = {"all": float((pred == y).mean())}
        row.update({k: float((pred[kinds == k] == y[kinds == k]).mean()) for k in KINDS})
        results[name] = row
        print(f"{name:<13} {row['all']:6.3f} " + " ".join(f"{row[k]:9.3f}" for k in KINDS))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="corpus folder (default: the package's demo/data)")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--check", action="store_true", help="after generating, run the cheap fusion check")
    parser.add_argument("--check-only", action="store_true", help="only check the corpus already in --out")
    args = parser.parse_args(argv)
    if not args.check_only:
        generate(args.out, args.seed)
    if args.check or args.check_only:
        check(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
