"""ASR benchmark: word error rate and real-time factor of Whisper tiny.en and of pocketsphinx.

Also Whisper's encoder window (`align.whisper.PAD_SECONDS`). Writes benchmarks/results/asr.{json,md}.

    python -m benchmarks.asr [--ravdess-every 1] [--demo-every 1] [--pads 30 8] [--no-sphinx]

Corpora (references normalised with `align.text.normalise_transcript`, as the hypotheses are):
  - ravdess: the 1440 RAVDESS speech files under $EMOFUSE_DATA/ravdess (default ../shared/data),
    the reference is the file's statement; `--ravdess-every N` keeps every Nth file of each actor
    in name order, starting at file (actor - 1) mod N, so that a subsample covers every emotion;
  - demo: the packaged demo corpus (288 synthetic clips), the manifest's transcripts.

Recognisers, one thread each (OMP_NUM_THREADS=1 is set before any import):
  - pocketsphinx: `align.sphinx.Sphinx.recognize` (10 000-word vocabulary, energy-VAD segments);
  - whisper pad P: `align.whisper.WhisperASR("whisper", threads=1).transcribe` with PAD_SECONDS set
    to P for the call; P >= 30 means faster-whisper's own 30 s window (PAD_SECONDS = 1e9, so the
    module never shortens the window).
Every recogniser decodes the same clips, in turn, clip by clip; the audio is loaded once per
clip, outside the timing. Model loading is outside the timing too (a warm-up call first).

Figures per corpus and recogniser:
  - WER = (substitutions + deletions + insertions) / reference words, summed over all clips
    (word-level Levenshtein alignment);
  - RTF = decode wall-clock seconds / audio seconds over all clips, the median of the per-clip
    RTFs, and the CPU RTF (process CPU seconds / audio seconds: the machine is shared, and CPU
    time is what the recogniser itself spent);
  - warned: hypotheses with `Hypothesis.warnings` (Whisper's loop and low-confidence flags);
  - empty: hypotheses with no word; overlong: hypotheses at least 3 words longer than the
    reference (where loops and hallucinated text show);
  - RAVDESS WER by emotion (field 3 of the name) and by intensity (field 4): does shouting break ASR?
The worst clips (most edits) and the warned clips are listed with both texts. `--clips PATH`
writes every clip's hypotheses and timings as JSON lines, one clip flushed at a time; with
`--resume`, clips that PATH already holds for every recogniser are not decoded again (their
rows are read back): a run stopped on a busy machine continues where it stopped.
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"  # before numpy, onnxruntime and CTranslate2 are imported
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from functools import lru_cache  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "asr"
FULL_WINDOW = 30.0  # a pad of this many seconds or more: faster-whisper's own 30 s window
TRANSCRIPT_LIMITS = (0.2, 0.34, 0.5)  # word error rates a transcript check could warn above
OVERLONG = 3  # a hypothesis this many words longer than its reference counts as overlong
EXAMPLES = 8  # worst clips listed per corpus and recogniser


def data_root() -> Path:
    return Path(os.environ.get("EMOFUSE_DATA", ROOT.parent / "shared" / "data"))


# ------------------------------------------------------------------------------------ clips


@dataclass
class Clip:
    id: str
    audio: Path
    reference: list[str]
    emotion: str | None = None  # RAVDESS only
    intensity: str | None = None


def ravdess_clips(every: int) -> list[Clip]:
    from emofuse.align.text import normalise_transcript
    from emofuse.corpora.ravdess import EMOTIONS, INTENSITIES, STATEMENTS

    actors = sorted((data_root() / "ravdess").glob("Actor_*"))
    if not actors:
        sys.exit(f"benchmark needs RAVDESS under {data_root()}/ravdess (set EMOFUSE_DATA)")
    # (files of one actor are in emotion order: a stride of 12 over all would take the same
    # emotions from every actor)
    files = [path for k, actor in enumerate(actors) for path in sorted(actor.glob("*.flac"))[k % every::every]]
    clips = []
    for path in files:
        fields = path.stem.split("-")
        clips.append(Clip(path.stem, path, normalise_transcript(STATEMENTS[fields[4]]),
                          EMOTIONS[fields[2]], INTENSITIES[fields[3]]))
    return clips


def demo_clips(every: int) -> list[Clip]:
    from emofuse.align.text import normalise_transcript
    from emofuse.demo import load_demo_corpus

    return [Clip(u.id, Path(u.audio), normalise_transcript(u.transcript)) for u in list(load_demo_corpus())[::every]]


# -------------------------------------------------------------------------------------- WER


def edit_counts(reference: list[str], hypothesis: list[str]) -> tuple[int, int, int]:
    """(substitutions, deletions, insertions): `emofuse.align.text.word_edits`, the count the
    predictor's transcript check uses."""
    from emofuse.align.text import word_edits

    return word_edits(reference, hypothesis)


# ------------------------------------------------------------------------------ recognisers


@dataclass
class Recogniser:
    key: str
    describe: str
    decode: Callable[[np.ndarray], tuple[list[str], list[str], str]]  # audio -> (words, warnings, text)
    settings: dict


def sphinx_recogniser() -> Recogniser:
    from emofuse.align.sphinx import Sphinx

    sphinx = Sphinx()
    sphinx.recognizer  # noqa: B018 -- build the decoder (and its dictionary) outside the timing

    def decode(audio: np.ndarray):
        words = [w.text for w in sphinx.recognize(audio)]
        return words, [], " ".join(words)

    return Recogniser("pocketsphinx", "pocketsphinx 10k-word LM", decode, Sphinx.settings())


@lru_cache(maxsize=1)
def whisper_asr():
    """One WhisperASR (one loaded model) for every pad."""
    from emofuse.align.whisper import PREFIX, WhisperASR

    return WhisperASR(PREFIX, threads=1)


def whisper_recogniser(pad: float) -> Recogniser:
    import emofuse.align.whisper as whisper

    asr = whisper_asr()
    value = 1e9 if pad >= FULL_WINDOW else float(pad)

    def decode(audio: np.ndarray):
        whisper.PAD_SECONDS = value  # read by transcribe at each call
        hyp = asr.transcribe(audio)
        return [w.text for w in hyp.words], list(hyp.warnings), hyp.text

    whisper.PAD_SECONDS = value
    asr.warm()
    settings = {**asr.settings(), "window_pad_seconds": None if pad >= FULL_WINDOW else value}
    window = "full 30 s window" if pad >= FULL_WINDOW else f"clip + {pad:g} s window"
    return Recogniser(f"whisper-pad{pad:g}", f"whisper {whisper.PACKAGED_NAME}, {window}", decode, settings)


# ---------------------------------------------------------------------------------- running


def read_clip_log(path: Path) -> dict[tuple[str, str, str], dict]:
    """Rows of an earlier run's --clips file by (corpus, recogniser, id); a line cut short by a
    killed run is skipped."""
    done = {}
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        done[row.pop("corpus"), row.pop("recogniser"), row["id"]] = row
    return done


def run_corpus(name: str, clips: list[Clip], recognisers: list[Recogniser], clip_log,
               done: dict | None = None) -> dict:
    from emofuse.features.audio import load_audio

    done = done or {}
    rows: dict[str, list[dict]] = {r.key: [] for r in recognisers}
    started = time.perf_counter()
    resumed = 0
    for index, clip in enumerate(clips, 1):
        todo = [rec for rec in recognisers if (name, rec.key, clip.id) not in done]
        for rec in recognisers:  # each recogniser's earlier row is read back on its own
            if rec not in todo:
                rows[rec.key].append(done[name, rec.key, clip.id])
        resumed += not todo
        if not todo:
            continue
        audio = load_audio(clip.audio, 16000)
        seconds = len(audio) / 16000
        for rec in todo:
            wall, cpu = time.perf_counter(), time.process_time()
            words, warnings, text = rec.decode(audio)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            s, d, k = edit_counts(clip.reference, words)
            row = {"id": clip.id, "audio_s": seconds, "wall_s": wall, "cpu_s": cpu, "ref": len(clip.reference),
                   "sub": s, "del": d, "ins": k, "words": len(words), "warnings": warnings,
                   "emotion": clip.emotion, "intensity": clip.intensity, "text": text,
                   "reference": " ".join(clip.reference)}
            rows[rec.key].append(row)
            if clip_log:
                clip_log.write(json.dumps({"corpus": name, "recogniser": rec.key, **row}) + "\n")
        if clip_log:
            clip_log.flush()
        if index % 60 == 0 or index == len(clips):
            line = "  ".join(f"{key} WER {wer(r):.3f} RTF {sum(x['wall_s'] for x in r) / sum(x['audio_s'] for x in r):.3f}"
                             for key, r in rows.items())
            print(f"[{name} {index}/{len(clips)} {time.perf_counter() - started:.0f}s, {resumed} resumed] {line}",
                  flush=True)
    return {key: {**summary(r, ravdess=name == "ravdess"), "resumed_clips": resumed} for key, r in rows.items()}


def wer(rows: list[dict]) -> float:
    ref = sum(r["ref"] for r in rows)
    return sum(r["sub"] + r["del"] + r["ins"] for r in rows) / ref if ref else float("nan")


def summary(rows: list[dict], ravdess: bool) -> dict:
    audio = sum(r["audio_s"] for r in rows)
    edits = lambda r: r["sub"] + r["del"] + r["ins"]  # noqa: E731
    out = {
        "clips": len(rows), "audio_s": round(audio, 2), "reference_words": sum(r["ref"] for r in rows),
        "wer": round(wer(rows), 4),
        "substitutions": sum(r["sub"] for r in rows), "deletions": sum(r["del"] for r in rows),
        "insertions": sum(r["ins"] for r in rows),
        "clips_with_errors": sum(edits(r) > 0 for r in rows),
        "rtf": round(sum(r["wall_s"] for r in rows) / audio, 4),
        "rtf_median": round(float(np.median([r["wall_s"] / r["audio_s"] for r in rows])), 4),
        "rtf_cpu": round(sum(r["cpu_s"] for r in rows) / audio, 4),
        "warned": sum(bool(r["warnings"]) for r in rows),
        "empty": sum(r["words"] == 0 for r in rows),
        "overlong": sum(r["words"] >= r["ref"] + OVERLONG for r in rows),
    }
    if ravdess:
        # The predictor's transcript check warns when a given transcript's WER against the
        # recogniser's words is over TRANSCRIPT_WER_LIMIT: on true transcripts, every warning is a
        # false alarm (it must stay under 2 %).
        rates = [edits(r) / r["ref"] for r in rows if r["ref"]]
        out["transcript_check_false_alarms"] = {str(t): round(sum(x > t for x in rates) / len(rates), 4)
                                                for t in TRANSCRIPT_LIMITS}
        for field in ("emotion", "intensity"):
            groups = sorted({r[field] for r in rows})
            out[f"wer_by_{field}"] = {g: round(wer([r for r in rows if r[field] == g]), 4) for g in groups}
    example = lambda r: {"id": r["id"], "reference": r["reference"], "hypothesis": r["text"],  # noqa: E731
                         "edits": edits(r), "warnings": r["warnings"]}
    worst = sorted((r for r in rows if edits(r) > 0), key=lambda r: (-edits(r), r["id"]))[:EXAMPLES]
    out["worst"] = [example(r) for r in worst]
    out["warned_examples"] = [example(r) for r in rows if r["warnings"]][:EXAMPLES]
    return out


# ---------------------------------------------------------------------------------- report


def machine() -> dict:
    from importlib.metadata import version

    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").is_file() else platform.processor()
    return {"cpu": model, "cpus": os.cpu_count(), "python": platform.python_version(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "faster_whisper": version("faster-whisper"), "ctranslate2": version("ctranslate2"),
            "pocketsphinx": version("pocketsphinx"),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}


def markdown(result: dict) -> str:
    lines = [f"# {result['what']}", "", f"Command: `{result['command']}`", "",
             f"Machine: {result['machine']['cpu']}, {result['machine']['cpus']} CPUs (shared), one thread per "
             f"recogniser; load average {result['machine']['load_average_at_start']} at the start, "
             f"{result['machine'].get('load_average_at_end')} at the end. {result['seconds']:.0f} s in all.", "",
             "WER = edits / reference words over all clips. RTF = decode wall seconds / audio seconds (total, and "
             "the median clip); CPU RTF = process CPU seconds / audio seconds. warned = Whisper flagged a loop or "
             f"an unsure decode; overlong = at least {OVERLONG} words more than the reference.", "",
             "| corpus | recogniser | clips | WER | sub / del / ins | RTF | RTF median | CPU RTF | warned | empty | overlong |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for corpus, by_rec in result["corpora"].items():
        for key, s in by_rec.items():
            lines.append(f"| {corpus} | {result['recognisers'][key]} | {s['clips']} | {s['wer']:.4f} | "
                         f"{s['substitutions']} / {s['deletions']} / {s['insertions']} | {s['rtf']:.3f} | "
                         f"{s['rtf_median']:.3f} | {s['rtf_cpu']:.3f} | {s['warned']} | {s['empty']} | {s['overlong']} |")
    ravdess = result["corpora"].get("ravdess")
    if ravdess:
        lines += ["", "The transcript check's false alarms on RAVDESS's true statements: the share of clips whose "
                  "WER against the recogniser's words is over each limit (inference.predictor.TRANSCRIPT_WER_LIMIT):",
                  "", "| recogniser | " + " | ".join(f"> {t}" for t in TRANSCRIPT_LIMITS) + " |",
                  "|---|" + "---:|" * len(TRANSCRIPT_LIMITS)]
        for key, s in ravdess.items():
            lines.append(f"| {result['recognisers'][key]} | "
                         + " | ".join(f"{s['transcript_check_false_alarms'][str(t)]:.4f}" for t in TRANSCRIPT_LIMITS) + " |")
        for field in ("emotion", "intensity"):
            groups = list(next(iter(ravdess.values()))[f"wer_by_{field}"])
            lines += ["", f"RAVDESS WER by {field}:", "",
                      "| recogniser | " + " | ".join(groups) + " |", "|---|" + "---:|" * len(groups)]
            for key, s in ravdess.items():
                lines.append(f"| {result['recognisers'][key]} | "
                             + " | ".join(f"{s[f'wer_by_{field}'][g]:.4f}" for g in groups) + " |")
    resumed = {c: max(s.get("resumed_clips", 0) for s in by_rec.values()) for c, by_rec in result["corpora"].items()}
    if any(resumed.values()):
        lines += ["", "Resumed (--resume): " + ", ".join(f"{n} {c} clips" for c, n in resumed.items() if n)
                  + " were decoded by an earlier, stopped run of the same command's recognisers and read back "
                  "from its --clips log; their times are that run's."]
    lines += ["", "Worst clips (most edits) per corpus and recogniser are in asr.json (`worst`, `warned_examples`).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ravdess-every", type=int, default=1, help="keep every Nth RAVDESS file (default: all 1440)")
    parser.add_argument("--demo-every", type=int, default=1, help="keep every Nth demo clip (default: all 288)")
    parser.add_argument("--corpora", nargs="+", choices=("ravdess", "demo"), default=["ravdess", "demo"])
    parser.add_argument("--pads", nargs="+", type=float, default=[FULL_WINDOW, 8.0],
                        help="Whisper encoder-window paddings in seconds; >= 30 = the full 30 s window")
    parser.add_argument("--no-sphinx", action="store_true", help="Whisper only (a padding sweep)")
    parser.add_argument("--results", default=str(RESULTS), help="results path without suffix (.json and .md)")
    parser.add_argument("--clips", type=Path, help="also write every clip's hypotheses here (JSON lines)")
    parser.add_argument("--resume", action="store_true",
                        help="reuse the clips the --clips file already holds and append the others to it")
    args = parser.parse_args(argv)
    if args.resume and not args.clips:
        parser.error("--resume needs --clips PATH")

    from emofuse.io import atomic_write_text

    started = time.perf_counter()
    result = {"what": __doc__.split("\n")[0],
              "command": "python -m benchmarks.asr " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": machine()}
    recognisers = ([] if args.no_sphinx else [sphinx_recogniser()]) + [whisper_recogniser(p) for p in args.pads]
    result["recognisers"] = {r.key: r.describe for r in recognisers}
    result["settings"] = {r.key: r.settings for r in recognisers}
    result["corpora"] = {}
    loaders = {"ravdess": lambda: ravdess_clips(args.ravdess_every), "demo": lambda: demo_clips(args.demo_every)}
    done = read_clip_log(args.clips) if args.resume else {}
    clip_log = open(args.clips, "a" if args.resume else "w", encoding="utf-8") if args.clips else None
    if clip_log and clip_log.tell() and not args.clips.read_bytes().endswith(b"\n"):
        clip_log.write("\n")  # a killed run's last line may be cut short: keep it apart
    try:
        for name in args.corpora:
            clips = loaders[name]()
            print(f"== {name}: {len(clips)} clips, {', '.join(result['recognisers'].values())}", flush=True)
            result["corpora"][name] = run_corpus(name, clips, recognisers, clip_log, done)
    finally:
        if clip_log:
            clip_log.close()
    result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["seconds"] = round(time.perf_counter() - started, 1)
    text = markdown(result)
    atomic_write_text(Path(args.results).with_suffix(".json"), json.dumps(result, indent=2) + "\n")
    atomic_write_text(Path(args.results).with_suffix(".md"), text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
