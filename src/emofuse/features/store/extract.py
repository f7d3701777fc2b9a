"""The extraction engine: plan the missing entries, run them on worker processes, report.

`plan` (plan.py) lists a job per utterance with entries missing; an engine is where jobs meet
processes: `run_pool` (in this process, or an `emofuse.pool.Pool` on this machine) or
`run_ray` (cluster.py: Ray tasks on a cluster, the optional `emofuse[cluster]` extra). Each worker runs `run_jobs` on a
chunk and writes its entries atomically without a shared lock, so a new run only computes
what is missing, and several runs (`--shard K/N`, one per machine or SLURM array task) can
fill one store side by side. A failure on one utterance is recorded (stage and reason) and
the run goes on; `ExtractReport` adds up what was done, how fast, and what failed.

`device` ("auto", "cpu", "cuda", "cuda:N") is where hf: encoders run in each worker ("auto":
the GPU when torch sees one); the built-in features always run on the CPU. An hf: speech
encoder encodes a worker's whole chunk at once (`HFSpeechEncoder.encode_many`, batched by
length), the word encoders a chunk's sentences at once. The device is not part of a store
key: a GPU's float32 kernels give the same values to about 1e-5.
"""

from __future__ import annotations

import math
import os
import re
import resource
import sys
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from emofuse.align import UNTIMED, Alignment, align_utterance
from emofuse.align.vad import energy_speech_mask
from emofuse.corpora.base import Corpus, Utterance
from emofuse.errors import ConfigError, EmofuseError, JobFailed, first_line
from emofuse.features.frames import SAMPLE_RATE, get_frame_feature
from emofuse.features.store.layout import StoreLayout, read_alignment, write_json_entry, write_tensors
from emofuse.features.store.plan import Failure, Job, in_shard, plan
from emofuse.features.words import get_word_encoder
from emofuse.pool import Pool


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



_RESOURCES: dict = {}


def _resource(kind: str, spec: str, cache_dir: str | None, stage_seconds: Counter, device: str = "auto"):
    """One opened extractor / decoder / encoder per process, built on first use; hf: encoders
    on `device`."""
    from emofuse.features.hf import HFWordEncoder, identity, is_hf, speech_frame_feature

    hf = is_hf(spec)
    key = (kind, spec, identity(spec), device if hf else None)  # hf: the weights hash, so a changed folder is reloaded
    if key not in _RESOURCES:
        start = time.perf_counter()
        if kind == "frames":
            _RESOURCES[key] = (speech_frame_feature(spec, device=device) if hf else get_frame_feature(spec)).warm()
        elif kind == "words":
            _RESOURCES[key] = (HFWordEncoder(spec, device=device) if hf else get_word_encoder(spec, cache_dir)).warm()
        elif kind == "asr":
            from emofuse.align import make_recogniser

            _RESOURCES[key] = make_recogniser(spec)
        else:
            from emofuse.align.sphinx import Sphinx

            _RESOURCES[key] = Sphinx()
            _RESOURCES[key].aligner  # noqa: B018 - build the alignment decoder now
        stage_seconds[f"init:{spec}"] += time.perf_counter() - start
    return _RESOURCES[key]


def _one_thread() -> None:
    """One thread per worker: N workers use N cores (torch reads these at import)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = "1"
    if "torch" in sys.modules:  # imported already by the main module the worker re-imports
        sys.modules["torch"].set_num_threads(1)


@dataclass
class Result:
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
    return str(exc) if isinstance(exc, EmofuseError) else first_line(exc).rstrip(": ")


class _LazyRecogniser:
    """The worker's recogniser, opened (`_resource`) on its first use."""

    def __init__(self, spec: str, cache_dir: str | None, stage_seconds: Counter):
        self.spec, self.cache_dir, self.stage_seconds = spec, cache_dir, stage_seconds

    def _open(self):
        return _resource("asr", self.spec, self.cache_dir, self.stage_seconds)

    @property
    def name(self) -> str:
        return self._open().name

    def transcribe(self, audio):
        return self._open().transcribe(audio)


def _align_entry(job: Job, utt: Utterance, audio, res: Result, cache_dir: str | None) -> Alignment | None:
    """Compute and store the alignment, or read the stored one when only words are missing."""
    if not job.compute_align:
        if not job.words:
            return None
        try:
            return read_alignment(Path(job.align_path))
        except Exception as exc:
            res.errors.append(("align", _reason(exc)))
            return None
    if audio is None and job.align_mode not in ("corpus", *UNTIMED):
        res.errors.append(("align", "skipped: the audio could not be read"))
        return None
    try:
        sphinx = _resource("align", "pocketsphinx", cache_dir, res.stage_seconds)
        # the recogniser is opened only when an utterance needs it (asr, or a failed forced alignment)
        recogniser = _LazyRecogniser(job.asr, cache_dir, res.stage_seconds)
        t = time.perf_counter()
        known = set(sphinx.added)
        alignment = align_utterance(utt, audio, job.align_mode, sphinx=sphinx, recogniser=recogniser)
        res.pronunciations = {w: how for w, how in sphinx.added.items() if w not in known}
        res.stage_seconds["align"] += time.perf_counter() - t
        t = time.perf_counter()
        write_json_entry(Path(job.align_path), {"id": utt.id, **alignment.to_json()})
        res.stage_seconds["write"] += time.perf_counter() - t
    except Exception as exc:
        res.errors.append(("align", _reason(exc)))
        return None
    res.source, res.fallbacks = alignment.source, alignment.fallbacks
    return alignment


def _frame_entries(job: Job, utt: Utterance, audio: np.ndarray, res: Result, cache_dir: str | None,
                   batched: list) -> None:
    """Store the speech mask and every missing frame feature of one utterance; features that
    encode many utterances at once (`extract_many`) are left in `batched` for `_batched_frame_entries`."""
    if job.vad_path is not None:
        t = time.perf_counter()
        try:
            speech = energy_speech_mask(audio, SAMPLE_RATE)  # (T,) on the 10 ms grid
            res.stage_seconds["vad"] += time.perf_counter() - t
            write_tensors(Path(job.vad_path), {"speech": speech.astype(np.uint8)}, {"id": utt.id, "hop": 0.01})
        except Exception as exc:
            res.errors.append(("vad", _reason(exc)))
    for name, path in job.frames:
        try:
            feature = _resource("frames", name, cache_dir, res.stage_seconds, job.device)
            if hasattr(feature, "extract_many"):
                batched.append((name, path, utt.id, audio, res))
                continue
            t = time.perf_counter()
            values = feature.extract(audio, SAMPLE_RATE)  # (T, D)
            res.stage_seconds[f"frames:{name}"] += time.perf_counter() - t
            t = time.perf_counter()
            write_tensors(Path(path), {"features": values}, {"id": utt.id, "feature": name, "hop": feature.hop})
            res.stage_seconds["write"] += time.perf_counter() - t
        except Exception as exc:
            res.errors.append((f"frames:{name}", _reason(exc)))


def _batched_frame_entries(batched: list, cache_dir: str | None, device: str) -> None:
    """Encode each batching feature's utterances of a chunk together (sorted and padded by
    length inside the encoder) and store them; if the batch fails, each utterance is encoded
    alone so that the failure lands on the utterance that caused it.
    batched: [(feature name, entry path, utterance id, audio, result)]."""
    for name in dict.fromkeys(b[0] for b in batched):
        todo = [b for b in batched if b[0] == name]
        feature = _resource("frames", name, cache_dir, todo[0][4].stage_seconds, device)
        t = time.perf_counter()
        try:
            values = feature.extract_many([audio for _, _, _, audio, _ in todo], SAMPLE_RATE)  # [(T_i, D)]
        except Exception:
            values = None
        share = (time.perf_counter() - t) / len(todo)
        for k, (_, path, utt_id, audio, res) in enumerate(todo):
            try:
                if values is None:
                    t = time.perf_counter()
                    value = feature.extract(audio, SAMPLE_RATE)  # (T, D)
                    res.stage_seconds[f"frames:{name}"] += time.perf_counter() - t
                else:
                    value = values[k]
                    res.stage_seconds[f"frames:{name}"] += share
                t = time.perf_counter()
                write_tensors(Path(path), {"features": value}, {"id": utt_id, "feature": name, "hop": feature.hop})
                res.stage_seconds["write"] += time.perf_counter() - t
            except Exception as exc:
                res.errors.append((f"frames:{name}", _reason(exc)))


def _word_entries(pending: list, cache_dir: str | None, device: str = "auto") -> None:
    """Encode the words of a whole chunk per encoder (one MiniLM batch, not one call per
    utterance) and store each utterance's vectors. pending: [(result, alignment, [(spec, path)])]."""
    specs = list(dict.fromkeys(spec for _, _, words in pending for spec, _ in words))
    for spec in specs:
        todo = [(res, alignment, path) for res, alignment, words in pending for s, path in words if s == spec]
        try:
            encoder = _resource("words", spec, cache_dir, todo[0][0].stage_seconds, device)
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
                write_tensors(Path(path), {"vectors": vectors.astype(np.float32)}, {"id": res.id, "encoder": spec})
            except Exception as exc:
                res.errors.append((f"words:{spec}", _reason(exc)))
            res.stage_seconds["write"] += time.perf_counter() - t


def run_jobs(jobs: list[Job], cache_dir: str | None) -> list[Result]:
    """Worker: compute the missing entries of a chunk of utterances; never raises for one
    utterance's problem, it lands in that utterance's `errors` with its stage."""
    from emofuse.features.audio import load_audio

    cpu_start = time.process_time()
    results, pending_words, batched_frames = [], [], []
    for job in jobs:
        utt = Utterance.from_json(job.utt)
        res = Result(utt.id)
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
            _frame_entries(job, utt, audio, res, cache_dir, batched_frames)
        if job.words:
            if alignment is not None:
                pending_words.append((res, alignment, job.words))
            elif not any(stage in ("align", "audio") for stage, _ in res.errors):
                res.errors.append(("words", "no alignment to take the words from"))
    device = jobs[0].device if jobs else "auto"
    _batched_frame_entries(batched_frames, cache_dir, device)
    batched_frames.clear()  # the chunk's audio
    _word_entries(pending_words, cache_dir, device)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    for res in results:
        res.rss_mb = rss
    if results:
        results[0].cpu_seconds = time.process_time() - cpu_start
    return results


def _setup_worker(cache_dir: str) -> str:
    _one_thread()
    return cache_dir


def _run_chunk(cache_dir: str, jobs: list[Job], _progress) -> list[Result]:
    return run_jobs(jobs, cache_dir)


def chunk_name(jobs: list[Job]) -> str:
    """A chunk in a worker's error line: its utterance ids."""
    return "utterances " + ", ".join(job.utt["id"] for job in jobs)


def run_pool(chunks: list[list[Job]], workers: int, cache_dir: str) -> Iterator[list[Result]]:
    """Run each chunk of jobs and yield its results as chunks finish: in this process when
    `workers` <= 1, else on that many spawned processes (an `emofuse.pool.Pool`: one openSMILE /
    pocketsphinx / MiniLM each, torch on one thread). A worker that dies (killed for memory)
    fails its own chunk's utterances alone (stage "worker", a line naming the chunk) and is
    replaced; every other chunk still finishes. Closing the generator (Ctrl-C) ends the workers."""
    if workers <= 1:
        for chunk in chunks:
            yield run_jobs(chunk, cache_dir)
        return
    with Pool(_setup_worker, _run_chunk, (cache_dir,), workers, name="extraction", owner="the run") as pool:
        chunk_of = {pool.submit(chunk, chunk_name(chunk)): chunk for chunk in chunks}
        remaining = set(chunk_of)
        while remaining:
            done, remaining = wait(remaining, return_when=FIRST_COMPLETED)
            for future in done:
                try:
                    results = future.result()
                except JobFailed as exc:
                    results = [Result(job.utt["id"], errors=[("worker", str(exc))]) for job in chunk_of[future]]
                except Exception as exc:  # noqa: BLE001 -- raised in the chunk (memory, torch): this chunk alone fails
                    why = f"{chunk_name(chunk_of[future])}: {_reason(exc)}"
                    results = [Result(job.utt["id"], errors=[("worker", why)]) for job in chunk_of[future]]
                yield results


ENGINES = ("process", "ray")
DEVICES = ("auto", "cpu", "cuda", "cuda:N")


def check_device(device: str) -> None:
    """A ConfigError for a device that is not auto/cpu/cuda/cuda:N, or cuda on a machine
    where torch sees no GPU (checked here, once, rather than in every worker)."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device or ""):
        raise ConfigError(f"unknown device {device!r}; known: {', '.join(DEVICES)}")
    if device.startswith("cuda"):  # torch is imported only then: the built-in features never need it
        from emofuse.features.hf import resolve_device

        resolve_device(device)


def extract(
    layout: StoreLayout,
    corpus: Corpus | Sequence[Utterance],
    features: Sequence[str],
    align: str | None = "auto",
    workers: int = 1,
    progress: bool = True,
    force: bool = False,
    chunk_size: int = 16,
    engine: str = "process",
    address: str | None = None,
    shard: tuple[int, int] | None = None,
    device: str = "auto",
) -> ExtractReport:
    """Compute every missing entry; returns what was done, how fast, and what failed.

    `engine="process"`: `workers` > 1 runs that many processes (`run_pool`); 0 or 1 runs
    here. `engine="ray"`: Ray tasks on the cluster at `address`, or on a local instance with
    `workers` CPUs (`run_ray`). `shard=(K, N)` takes only part K of N of the utterances
    (`in_shard`). `device`: where hf: encoders run (module docstring). Ctrl-C stops at once
    and keeps every finished entry; the same call again resumes.
    """
    if engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r}; known: {', '.join(ENGINES)}")
    if address and engine != "ray":
        raise ConfigError("--address names a Ray cluster; it needs --engine ray")
    check_device(device)
    start = time.perf_counter()
    utterances = in_shard(list(corpus), shard)
    jobs, complete, failures = plan(layout, utterances, features, align, force, device)
    report = ExtractReport(utterances=len(utterances), cached=complete, failures=failures, workers=max(1, workers))
    cache_dir = str(layout.root / "cache")
    size = max(1, min(chunk_size, math.ceil(len(jobs) / max(1, workers * 4))))
    chunks = [jobs[i : i + size] for i in range(0, len(jobs), size)]
    with _Progress(progress, len(utterances), complete) as bar:
        if engine == "ray":
            from emofuse.features.store.cluster import run_ray  # the optional extra: imported only here

            running = run_ray(chunks, workers, cache_dir, address)
        else:
            running = run_pool(chunks, workers, cache_dir)
        for results in running:
            _collect(report, results, bar)
    report.wall_seconds = time.perf_counter() - start
    report.peak_rss_mb = max(report.peak_rss_mb, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)
    return report


def _collect(report: ExtractReport, results: list[Result], bar: "_Progress") -> None:
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
