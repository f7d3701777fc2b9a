"""The on-disk feature store: extract once, in parallel and resumably; load as padded batches.

Layout under the store root (one folder per kind of entry and hash of its settings)::

    frames/<feature>-<settings hash>/<utterance key>.safetensors   features (T, D)
    vad/energy-<settings hash>/<utterance key>.safetensors        speech (T,) on the 10 ms grid
    align/<mode>-<settings hash>/<utterance key>.json              words, times, source, fallbacks
    words/<encoder>-<settings hash>/<align folder>/<utterance key>.safetensors   vectors (W, D)

Each folder holds `settings.json`, the settings its hash was made from (feature parameters and
`CODE_VERSION`): a changed setting is a new folder (recomputed), an unchanged one is found
and skipped. The utterance key is its id plus a hash of what the entry depends on: audio path
and start/end for frames; also the transcript and corpus word times for alignments and word
vectors. Word vectors live under the alignment they were computed from.

Entries are safetensors files (memory-mapped on load) and JSON, each written to a temporary
file in the same folder and moved into place with `os.replace`, so an interrupted run leaves
finished entries whole, never a half-written one; workers write without a shared lock, and
a new run only computes what is missing. A failure on one utterance is recorded (stage and
reason) and the run goes on.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import resource
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from emofuse.align import UNTIMED, Alignment, align_utterance, resolve_mode
from emofuse.align.vad import VAD_SETTINGS, energy_speech_mask
from emofuse.corpora.base import Corpus, Utterance
from emofuse.errors import ConfigError, DataError, EmofuseError
from emofuse.features.frames import SAMPLE_RATE, frame_feature_names, get_frame_feature, speech_mask
from emofuse.features.words import get_word_encoder, is_word_feature, word_encoder_settings
from emofuse.io import atomic_open, atomic_path

if TYPE_CHECKING:
    from emofuse.features.batch import UtteranceFeatures

CODE_VERSION = 1  # bump when a code change alters stored values
STALE_TMP_SECONDS = 600


# ------------------------------------------------------------------------------ keys


def settings_hash(settings: dict) -> str:
    text = json.dumps({**settings, "code_version": CODE_VERSION}, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _safe(name: str, limit: int = 80) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:limit]


def utterance_key(utt: Utterance, with_text: bool) -> str:
    """`<id>-<hash of what the entry depends on>` (module docstring)."""
    identity = {"id": utt.id, "audio": utt.audio, "start": utt.start, "end": utt.end}
    if with_text:
        identity["transcript"] = utt.transcript
        identity["words"] = [[w.text, w.start, w.end] for w in utt.words] if utt.words else None
    digest = hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    return f"{_safe(utt.id)}-{digest}"


def split_features(features: Iterable[str]) -> tuple[list[str], list[str]]:
    """(frame features, word features) from one list of names; ConfigError for unknown names."""
    frames, words = [], []
    for name in features:
        name = name.strip()
        if not name:
            continue
        if name in frame_feature_names():
            frames.append(name)
        elif is_word_feature(name):
            words.append(name)
        else:
            raise ConfigError(
                f"unknown feature {name!r}; frame features: {', '.join(frame_feature_names())}; "
                "word features: minilm, glove50, glove-file:PATH"
            )
    return list(dict.fromkeys(frames)), list(dict.fromkeys(words))


def align_mode_for(utt: Utterance, align: str | None, want_words: bool) -> str | None:
    """The resolved alignment mode of one utterance (align.resolve_mode); word vectors
    without an alignment use the transcript's words ("text")."""
    mode = resolve_mode(utt, align or "none")
    if mode is None and want_words:
        return "text"
    return mode


# ---------------------------------------------------------------------------- report


@dataclass
class Failure:
    id: str
    stage: str
    reason: str


@dataclass
class ExtractReport:
    utterances: int = 0
    computed: int = 0  # utterances processed in this run (those that failed included)
    cached: int = 0  # utterances with every entry already stored
    failures: list[Failure] = field(default_factory=list)
    align_sources: Counter = field(default_factory=Counter)  # of alignments computed in this run
    fallbacks: Counter = field(default_factory=Counter)
    pronunciations: Counter = field(default_factory=Counter)  # out-of-dictionary words, by method
    words: int = 0
    oov_words: int = 0
    audio_seconds: float = 0.0  # audio of the utterances computed in this run
    stage_seconds: Counter = field(default_factory=Counter)  # processing seconds, summed over workers
    cpu_seconds: float = 0.0  # CPU time of the processing, summed over workers (model loading included)
    wall_seconds: float = 0.0
    workers: int = 1
    peak_rss_mb: float = 0.0  # largest resident set of the main process or any worker

    @property
    def failed_ids(self) -> list[str]:
        return list(dict.fromkeys(f.id for f in self.failures))

    def rtf(self) -> dict:
        """Real-time factors: processing seconds per second of audio, per stage (CPU time
        summed over workers) and in total (wall clock)."""
        if self.audio_seconds <= 0:
            return {}
        out = {stage: s / self.audio_seconds for stage, s in sorted(self.stage_seconds.items())}
        out["total_wall"] = self.wall_seconds / self.audio_seconds
        out["total_cpu"] = self.cpu_seconds / self.audio_seconds
        return out

    def to_json(self) -> dict:
        record = asdict(self)
        record["failures"] = [asdict(f) for f in self.failures]
        for key in ("align_sources", "fallbacks", "pronunciations", "stage_seconds"):
            record[key] = dict(getattr(self, key))
        record["rtf"] = self.rtf()
        return record


# ------------------------------------------------------------------- atomic entries


def _write_json(path: Path, record: dict) -> None:
    with atomic_open(path) as out:
        json.dump(record, out, ensure_ascii=False)


def _write_tensors(path: Path, tensors: dict, metadata: dict) -> None:
    from safetensors.numpy import save_file

    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={k: str(v) for k, v in metadata.items()})


def _read_tensors(path: Path) -> dict:
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except Exception as exc:
        raise DataError(path, f"unreadable feature entry ({exc}); delete it and run extract again") from None


def _read_alignment(path: Path) -> Alignment:
    try:
        return Alignment.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(path, f"unreadable alignment entry ({exc}); delete it and run extract again") from None


# ------------------------------------------------------------------- worker side

_RESOURCES: dict = {}


def _resource(kind: str, spec: str, cache_dir: str | None, stage_seconds: Counter):
    """One opened extractor / decoder / encoder per process, built on first use."""
    key = (kind, spec)
    if key not in _RESOURCES:
        start = time.perf_counter()
        if kind == "frames":
            _RESOURCES[key] = get_frame_feature(spec).warm()
        elif kind == "words":
            _RESOURCES[key] = get_word_encoder(spec, cache_dir).warm()
        else:
            from emofuse.align.sphinx import Sphinx

            _RESOURCES[key] = Sphinx()
            _RESOURCES[key].aligner  # noqa: B018 - build the alignment decoder now
        stage_seconds[f"init:{spec}"] += time.perf_counter() - start
    return _RESOURCES[key]


def _init_worker() -> None:
    """One thread per worker: N workers use N cores (torch reads these at import)."""
    import sys

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = "1"
    if "torch" in sys.modules:  # imported already by the main module the worker re-imports
        sys.modules["torch"].set_num_threads(1)


@dataclass
class _Job:
    utt: dict
    align_mode: str | None
    align_path: str | None
    compute_align: bool
    frames: list  # [(feature name, entry path)]
    words: list  # [(encoder spec, entry path)]
    vad_path: str | None = None  # energy speech mask entry to compute


@dataclass
class _Result:
    id: str
    audio_seconds: float = 0.0
    errors: list = field(default_factory=list)  # [(stage, reason)]
    source: str | None = None
    fallbacks: list = field(default_factory=list)
    pronunciations: dict = field(default_factory=dict)
    words: int = 0
    oov: int = 0
    stage_seconds: Counter = field(default_factory=Counter)
    cpu_seconds: float = 0.0
    rss_mb: float = 0.0


def _reason(exc: BaseException) -> str:
    if isinstance(exc, EmofuseError):
        return str(exc)
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _align_entry(job: _Job, utt: Utterance, audio, res: _Result, cache_dir: str | None) -> Alignment | None:
    """Compute and store the alignment, or read the stored one when only words are missing."""
    if not job.compute_align:
        if not job.words:
            return None
        try:
            return _read_alignment(Path(job.align_path))
        except Exception as exc:
            res.errors.append(("align", _reason(exc)))
            return None
    if audio is None and job.align_mode not in ("corpus", *UNTIMED):
        res.errors.append(("align", "skipped: the audio could not be read"))
        return None
    try:
        sphinx = _resource("align", "pocketsphinx", cache_dir, res.stage_seconds)
        t = time.perf_counter()
        known = set(sphinx.added)
        alignment = align_utterance(utt, audio, job.align_mode, sphinx=sphinx)
        res.pronunciations = {w: how for w, how in sphinx.added.items() if w not in known}
        res.stage_seconds["align"] += time.perf_counter() - t
        t = time.perf_counter()
        _write_json(Path(job.align_path), {"id": utt.id, **alignment.to_json()})
        res.stage_seconds["write"] += time.perf_counter() - t
    except Exception as exc:
        res.errors.append(("align", _reason(exc)))
        return None
    res.source, res.fallbacks = alignment.source, alignment.fallbacks
    return alignment


def _frame_entries(job: _Job, utt: Utterance, audio: np.ndarray, res: _Result, cache_dir: str | None) -> None:
    """Store the speech mask and every missing frame feature of one utterance."""
    if job.vad_path is not None:
        t = time.perf_counter()
        try:
            speech = energy_speech_mask(audio, SAMPLE_RATE)  # (T,) on the 10 ms grid
            res.stage_seconds["vad"] += time.perf_counter() - t
            _write_tensors(Path(job.vad_path), {"speech": speech.astype(np.uint8)}, {"id": utt.id, "hop": 0.01})
        except Exception as exc:
            res.errors.append(("vad", _reason(exc)))
    for name, path in job.frames:
        try:
            feature = _resource("frames", name, cache_dir, res.stage_seconds)
            t = time.perf_counter()
            values = feature.extract(audio, SAMPLE_RATE)  # (T, D)
            res.stage_seconds[f"frames:{name}"] += time.perf_counter() - t
            t = time.perf_counter()
            _write_tensors(Path(path), {"features": values}, {"id": utt.id, "feature": name, "hop": feature.hop})
            res.stage_seconds["write"] += time.perf_counter() - t
        except Exception as exc:
            res.errors.append((f"frames:{name}", _reason(exc)))


def _word_entries(pending: list, cache_dir: str | None) -> None:
    """Encode the words of a whole chunk per encoder (one MiniLM batch, not one call per
    utterance) and store each utterance's vectors. pending: [(result, alignment, [(spec, path)])]."""
    specs = list(dict.fromkeys(spec for _, _, words in pending for spec, _ in words))
    for spec in specs:
        todo = [(res, alignment, path) for res, alignment, words in pending for s, path in words if s == spec]
        try:
            encoder = _resource("words", spec, cache_dir, todo[0][0].stage_seconds)
            t = time.perf_counter()
            encoded = encoder.encode([alignment.texts for _, alignment, _ in todo])
        except Exception as exc:
            for res, _, _ in todo:
                res.errors.append((f"words:{spec}", _reason(exc)))
            continue
        share = (time.perf_counter() - t) / len(todo)
        for (res, alignment, path), (vectors, oov) in zip(todo, encoded):
            res.stage_seconds[f"words:{spec}"] += share
            res.words += len(alignment.words)
            res.oov += oov
            t = time.perf_counter()
            try:
                _write_tensors(Path(path), {"vectors": vectors.astype(np.float32)}, {"id": res.id, "encoder": spec})
            except Exception as exc:
                res.errors.append((f"words:{spec}", _reason(exc)))
            res.stage_seconds["write"] += time.perf_counter() - t


def _run_jobs(jobs: list[_Job], cache_dir: str | None) -> list[_Result]:
    """Worker: compute the missing entries of a chunk of utterances; never raises for one
    utterance's problem, it lands in that utterance's `errors` with its stage."""
    from emofuse.features.audio import load_audio

    cpu_start = time.process_time()
    results, pending_words = [], []
    for job in jobs:
        utt = Utterance.from_json(job.utt)
        res = _Result(utt.id)
        results.append(res)
        audio = None
        decodes = job.compute_align and job.align_mode not in ("corpus", *UNTIMED)
        if job.frames or job.vad_path is not None or decodes:
            t = time.perf_counter()
            try:
                audio = load_audio(utt, SAMPLE_RATE)  # (N,) float32 at 16 kHz
                res.audio_seconds = len(audio) / SAMPLE_RATE
            except Exception as exc:
                res.errors.append(("audio", _reason(exc)))
            res.stage_seconds["audio"] += time.perf_counter() - t
        alignment = _align_entry(job, utt, audio, res, cache_dir) if job.align_path is not None else None
        if audio is not None:
            _frame_entries(job, utt, audio, res, cache_dir)
        if job.words:
            if alignment is not None:
                pending_words.append((res, alignment, job.words))
            elif not any(stage in ("align", "audio") for stage, _ in res.errors):
                res.errors.append(("words", "no alignment to take the words from"))
    _word_entries(pending_words, cache_dir)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    for res in results:
        res.rss_mb = rss
    if results:
        results[0].cpu_seconds = time.process_time() - cpu_start
    return results


# -------------------------------------------------------------------------- store


class FeatureStore:
    """Feature entries under `root` (module docstring). `extract` fills it, `load` reads it."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    # Folders --------------------------------------------------------------------------
    @staticmethod
    def frames_settings(name: str) -> dict:
        feature = get_frame_feature(name)
        return {"feature": name, "hop": feature.hop, "dim": feature.dim, **feature.settings}

    @staticmethod
    def align_settings(mode: str) -> dict:
        settings: dict = {"mode": mode}
        if mode in ("forced", "asr"):
            from emofuse.align.sphinx import Sphinx

            settings["decoder"] = Sphinx.settings()
        if mode in ("forced", "asr", "proportional"):
            settings["vad"] = dict(VAD_SETTINGS)  # silence gate and proportional spans use it
        return settings

    def vad_dir(self) -> Path:
        return self._folder("vad", "energy", dict(VAD_SETTINGS))

    def frames_dir(self, name: str) -> Path:
        return self._folder("frames", name, self.frames_settings(name))

    def align_dir(self, mode: str) -> Path:
        return self._folder("align", mode, self.align_settings(mode))

    def words_dir(self, spec: str, align_mode: str) -> Path:
        settings = word_encoder_settings(spec)
        folder = self._folder("words", settings["name"], settings)
        return folder / self.align_dir(align_mode).name

    def _folder(self, kind: str, name: str, settings: dict) -> Path:
        return self.root / kind / f"{_safe(name, 40)}-{settings_hash(settings)}"

    def _write_settings(self, folder: Path, settings: dict) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / "settings.json").exists():
            _write_json(folder / "settings.json", {**settings, "code_version": CODE_VERSION})

    def _clean_stale(self, folder: Path) -> None:
        """Remove temporary files an interrupted run left behind (never read as entries)."""
        now = time.time()
        for tmp in folder.glob(".*.tmp"):
            try:
                if now - tmp.stat().st_mtime > STALE_TMP_SECONDS:
                    tmp.unlink()
            except OSError:
                pass

    # Extract --------------------------------------------------------------------------
    def plan(
        self, corpus: Corpus | Sequence[Utterance], features: Sequence[str], align: str | None = "auto",
        force: bool = False,
    ) -> tuple[list[_Job], int, list[Failure]]:
        """The jobs of missing entries, how many utterances are complete, and utterances that
        cannot be planned (e.g. `--align corpus` without corpus word times)."""
        frame_names, word_specs = split_features(features)
        frame_dirs = {name: self.frames_dir(name) for name in frame_names}
        for name, folder in frame_dirs.items():
            self._write_settings(folder, self.frames_settings(name))
        vad_dir = self.vad_dir() if frame_names else None
        if vad_dir is not None:
            self._write_settings(vad_dir, dict(VAD_SETTINGS))
        jobs, complete, failures = [], 0, []
        align_dirs: dict[str, Path] = {}
        words_dirs: dict[tuple[str, str], Path] = {}
        for utt in corpus:
            try:
                mode = align_mode_for(utt, align, bool(word_specs))
            except EmofuseError as exc:
                failures.append(Failure(utt.id, "align", str(exc)))
                continue
            if mode is not None and mode not in align_dirs:
                align_dirs[mode] = self.align_dir(mode)
                self._write_settings(align_dirs[mode], self.align_settings(mode))
            frame_key = utterance_key(utt, with_text=False)
            text_key = utterance_key(utt, with_text=True)
            todo_frames = [(n, str(frame_dirs[n] / f"{frame_key}.safetensors")) for n in frame_names]
            if not force:
                todo_frames = [(n, p) for n, p in todo_frames if not os.path.exists(p)]
            vad_path = None
            if vad_dir is not None:
                vad_path = str(vad_dir / f"{frame_key}.safetensors")
                if not force and os.path.exists(vad_path):
                    vad_path = None
            if utt.audio is None:
                if todo_frames or vad_path:
                    failures.append(Failure(utt.id, "audio", "utterance has no audio file"))
                todo_frames, vad_path = [], None
            align_path = compute_align = None
            todo_words = []
            if mode is not None:
                align_path = str(align_dirs[mode] / f"{text_key}.json")
                compute_align = force or not os.path.exists(align_path)
                for spec in word_specs:
                    if (spec, mode) not in words_dirs:
                        words_dirs[(spec, mode)] = self.words_dir(spec, mode)
                        settings = word_encoder_settings(spec)
                        self._write_settings(words_dirs[(spec, mode)].parent, settings)
                        words_dirs[(spec, mode)].mkdir(parents=True, exist_ok=True)
                    path = str(words_dirs[(spec, mode)] / f"{text_key}.safetensors")
                    if force or compute_align or not os.path.exists(path):
                        todo_words.append((spec, path))
            if todo_frames or compute_align or todo_words or vad_path:
                jobs.append(_Job(utt.to_json(), mode, align_path, bool(compute_align), todo_frames, todo_words,
                                 vad_path))
            else:
                complete += 1
        for folder in [*frame_dirs.values(), *align_dirs.values(), *words_dirs.values(), *([vad_dir] if vad_dir else [])]:
            self._clean_stale(folder)
        return jobs, complete, failures

    def extract(
        self,
        corpus: Corpus | Sequence[Utterance],
        features: Sequence[str],
        align: str | None = "auto",
        workers: int = 1,
        progress: bool = True,
        force: bool = False,
        chunk_size: int = 16,
    ) -> ExtractReport:
        """Compute every missing entry; returns what was done, how fast, and what failed.

        `workers` > 1 runs that many processes (spawned; one openSMILE / pocketsphinx /
        MiniLM each, torch on one thread); 0 or 1 runs here. Ctrl-C stops at once and keeps
        every finished entry; the same call again resumes.
        """
        start = time.perf_counter()
        utterances = list(corpus)
        jobs, complete, failures = self.plan(utterances, features, align, force)
        report = ExtractReport(utterances=len(utterances), cached=complete, failures=failures, workers=max(1, workers))
        cache_dir = str(self.root / "cache")
        size = max(1, min(chunk_size, math.ceil(len(jobs) / max(1, workers * 4))))
        chunks = [jobs[i : i + size] for i in range(0, len(jobs), size)]
        with _Progress(progress, len(utterances), complete) as bar:
            if workers <= 1:
                for chunk in chunks:
                    self._collect(report, _run_jobs(chunk, cache_dir), bar)
            else:
                pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"), initializer=_init_worker)
                try:
                    futures = {pool.submit(_run_jobs, chunk, cache_dir): chunk for chunk in chunks}
                    remaining = set(futures)
                    while remaining:
                        done, remaining = wait(remaining, return_when=FIRST_COMPLETED)
                        for future in done:
                            try:
                                results = future.result()
                            except Exception as exc:  # a worker died (e.g. killed for memory)
                                results = [_Result(job.utt["id"], errors=[("worker", _reason(exc))]) for job in futures[future]]
                            self._collect(report, results, bar)
                except BaseException:
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
                pool.shutdown(wait=True)
        report.wall_seconds = time.perf_counter() - start
        report.peak_rss_mb = max(report.peak_rss_mb, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)
        return report

    @staticmethod
    def _collect(report: ExtractReport, results: list[_Result], bar: "_Progress") -> None:
        for res in results:
            report.computed += 1
            report.audio_seconds += res.audio_seconds
            report.stage_seconds.update(res.stage_seconds)
            report.cpu_seconds += res.cpu_seconds
            report.failures.extend(Failure(res.id, stage, reason) for stage, reason in res.errors)
            if res.source is not None:
                report.align_sources[res.source] += 1
            report.fallbacks.update(f.split(":", 1)[0] for f in res.fallbacks)
            report.pronunciations.update(res.pronunciations.values())
            report.words += res.words
            report.oov_words += res.oov
            report.peak_rss_mb = max(report.peak_rss_mb, res.rss_mb)
        bar.advance(len(results))

    # Load -----------------------------------------------------------------------------
    def load(
        self,
        corpus: Corpus | Sequence[Utterance],
        acoustic: str | None = None,
        words: str | None = None,
        align: str | None = "auto",
        missing: str = "error",
    ) -> list["UtteranceFeatures"]:
        """The stored features of `corpus`, in its order, for `features.batch.collate`.

        acoustic: a frame feature name or None; words: a word feature or None; align: the
        mode used at extraction (auto/forced/... or None for none). The speech mask comes
        from the word times when there are any, else from the stored energy mask.
        missing="error" raises a DataError saying what to extract; "skip" leaves such
        utterances out (compare ids with the corpus).
        """
        from emofuse.features.batch import UtteranceFeatures

        if missing not in ("error", "skip"):
            raise ConfigError(f"missing must be 'error' or 'skip', not {missing!r}")
        if acoustic is not None and acoustic not in frame_feature_names():
            raise ConfigError(f"unknown frame feature {acoustic!r}; known: {', '.join(frame_feature_names())}")
        if words is not None:
            split_features([words])
        frames_dir = self.frames_dir(acoustic) if acoustic else None
        vad_dir = self.vad_dir() if acoustic else None
        hop = get_frame_feature(acoustic).hop if acoustic else 0.01
        dirs: dict[str, tuple[Path, Path | None]] = {}
        out: list[UtteranceFeatures] = []
        absent: list[tuple[str, str]] = []
        for utt in corpus:
            mode = align_mode_for(utt, align, words is not None)
            item = UtteranceFeatures(id=utt.id, acoustic_hop=hop)
            lacking = None
            energy = None
            if frames_dir is not None:
                frame_key = utterance_key(utt, False)
                path = frames_dir / f"{frame_key}.safetensors"
                vad_path = vad_dir / f"{frame_key}.safetensors"
                if not path.is_file():
                    lacking = acoustic
                elif not vad_path.is_file():
                    lacking = "speech mask (vad)"
                else:
                    item.acoustic = _read_tensors(path)["features"]  # (T, D)
                    energy = _fit(_read_tensors(vad_path)["speech"].astype(bool), len(item.acoustic))  # (T,)
            alignment = None
            if mode is not None and lacking is None:
                if mode not in dirs:
                    dirs[mode] = (self.align_dir(mode), self.words_dir(words, mode) if words else None)
                text_key = utterance_key(utt, True)
                path = dirs[mode][0] / f"{text_key}.json"
                if path.is_file():
                    alignment = _read_alignment(path)
                    item.words = alignment.texts
                    item.align_source = alignment.source
                    if alignment.source not in UNTIMED:
                        item.word_times = alignment.times().astype(np.float32)  # (W, 2)
                    if words:
                        vpath = dirs[mode][1] / f"{text_key}.safetensors"
                        if vpath.is_file():
                            item.word_vectors = _read_tensors(vpath)["vectors"]  # (W, D_w)
                            if len(item.word_vectors) != len(item.words):
                                raise DataError(vpath, f"{len(item.word_vectors)} vectors for {len(item.words)} "
                                                       "aligned words; delete it and run extract again")
                        else:
                            lacking = words
                else:
                    lacking = f"alignment ({mode})"
            if lacking is not None:
                absent.append((utt.id, lacking))
                continue
            if item.acoustic is not None:
                times = item.word_times if item.word_times is not None and len(item.word_times) else None
                item.speech_mask = speech_mask(len(item.acoustic), hop, times) if times is not None else energy
            out.append(item)
        if absent and missing == "error":
            kinds = ", ".join(sorted({k for _, k in absent}))
            wanted = ",".join(x for x in (acoustic, words) if x)
            raise DataError(
                self.root,
                f"{len(absent)} of {len(out) + len(absent)} utterances have no stored {kinds} "
                f"(first: {absent[0][0]!r}); run: emofuse extract MANIFEST --features {wanted} "
                f"--align {align or 'none'} --out {self.root}",
            )
        return out


    def batches(
        self,
        corpus: Corpus | Sequence[Utterance],
        classes: Sequence[str],
        batch_size: int = 32,
        acoustic: str | None = None,
        words: str | None = None,
        align: str | None = "auto",
        vocab=None,
    ):
        """Padded `Batch`es with masks, in corpus order (labels are indices into `classes`;
        `vocab`, a `features.vocab.Vocabulary`, adds token ids). Training shuffles and
        normalises on its own; this is the plain path for evaluation and inspection."""
        from emofuse.errors import LabelError
        from emofuse.features.batch import collate

        utterances = list(corpus)
        items = self.load(utterances, acoustic=acoustic, words=words, align=align)
        index = {c: i for i, c in enumerate(classes)}
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            try:
                labels = [index[u.label] for u in utterances[start : start + batch_size]]
            except KeyError as exc:
                raise LabelError(f"label {exc.args[0]!r} is not one of the classes {list(classes)}") from None
            tokens = [vocab.encode(it.words or []) for it in chunk] if vocab is not None else None
            yield collate(chunk, labels, token_ids=tokens)


def _fit(mask: np.ndarray, length: int) -> np.ndarray:
    """A 10 ms mask cut or padded (with False) to a feature's frame count."""
    if len(mask) >= length:
        return mask[:length]
    return np.concatenate([mask, np.zeros(length - len(mask), dtype=bool)])


class _Progress:
    """Rich progress bar with ETA over utterances (quiet when disabled)."""

    def __init__(self, enabled: bool, total: int, done: int):
        self.enabled, self.total, self.done = enabled, total, done
        self._progress = None

    def __enter__(self) -> "_Progress":
        if self.enabled:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self._progress = Progress(
                TextColumn("extract"), BarColumn(), MofNCompleteColumn(), TextColumn("elapsed"),
                TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=Console(stderr=True),
            )
            self._progress.start()
            self._task = self._progress.add_task("extract", total=self.total, completed=self.done)
        return self

    def advance(self, n: int) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()
