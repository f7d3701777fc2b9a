"""The extraction engine: plan the missing entries, run them on worker processes, report.

`plan` lists a job per utterance with entries missing; an engine is where jobs meet
processes: `run_pool` (in this process, or a spawned pool on this machine) or `run_ray` (Ray
tasks on a cluster, the optional `emofuse[cluster]` extra). Each worker runs `run_jobs` on a
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

import hashlib
import logging
import math
import os
import re
import resource
import socket
import sys
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from emofuse.align import UNTIMED, Alignment, align_utterance
from emofuse.align.vad import VAD_SETTINGS, energy_speech_mask
from emofuse.corpora.base import Corpus, Utterance
from emofuse.errors import ConfigError, EmofuseError
from emofuse.features.frames import SAMPLE_RATE, get_frame_feature
from emofuse.features.store.layout import (
    StoreLayout,
    align_mode_for,
    read_alignment,
    split_features,
    utterance_key,
    write_json_entry,
    write_tensors,
)
from emofuse.features.words import get_word_encoder, word_encoder_settings
from emofuse.processes import exit_with_parent

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


def _init_worker(parent_pid: int) -> None:
    _one_thread()
    exit_with_parent(parent_pid)  # kill -9 of the run ends its workers too


@dataclass
class Job:
    utt: dict
    align_mode: str | None
    align_path: str | None
    compute_align: bool
    frames: list  # [(feature name, entry path)]
    words: list  # [(encoder spec, entry path)]
    vad_path: str | None = None  # energy speech mask entry to compute
    device: str = "auto"  # where hf: encoders run (module docstring)
    asr: str = "whisper"  # the recogniser (align.make_recogniser)


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
    if isinstance(exc, EmofuseError):
        return str(exc)
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


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


def plan(
    layout: StoreLayout, corpus: Corpus | Sequence[Utterance], features: Sequence[str], align: str | None = "auto",
    force: bool = False, device: str = "auto",
) -> tuple[list[Job], int, list[Failure]]:
    """The jobs of missing entries, how many utterances are complete, and utterances that
    cannot be planned (e.g. `--align corpus` without corpus word times)."""
    frame_names, word_specs = split_features(features)
    frame_dirs = {name: layout.frames_dir(name) for name in frame_names}
    for name, folder in frame_dirs.items():
        layout.write_settings(folder, layout.frames_settings(name))
    vad_dir = layout.vad_dir() if frame_names else None
    if vad_dir is not None:
        layout.write_settings(vad_dir, dict(VAD_SETTINGS))
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
            align_dirs[mode] = layout.align_dir(mode)
            layout.write_settings(align_dirs[mode], layout.align_settings(mode))
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
                    words_dirs[(spec, mode)] = layout.words_dir(spec, mode)
                    settings = word_encoder_settings(spec)
                    layout.write_settings(words_dirs[(spec, mode)].parent, settings)
                    words_dirs[(spec, mode)].mkdir(parents=True, exist_ok=True)
                path = str(words_dirs[(spec, mode)] / f"{text_key}.safetensors")
                if force or compute_align or not os.path.exists(path):
                    todo_words.append((spec, path))
        if todo_frames or compute_align or todo_words or vad_path:
            jobs.append(Job(utt.to_json(), mode, align_path, bool(compute_align), todo_frames, todo_words, vad_path,
                            device, layout.asr))
        else:
            complete += 1
    for folder in [*frame_dirs.values(), *align_dirs.values(), *words_dirs.values(), *([vad_dir] if vad_dir else [])]:
        layout.clean_stale(folder)
    return jobs, complete, failures


def run_pool(chunks: list[list[Job]], workers: int, cache_dir: str) -> Iterator[list[Result]]:
    """Run each chunk of jobs and yield its results as chunks finish: in this process when
    `workers` <= 1, else on that many spawned processes (one openSMILE / pocketsphinx /
    MiniLM each, torch on one thread). A worker that dies fails its chunk's utterances
    (stage "worker"); closing the generator (Ctrl-C) cancels what has not started."""
    if workers <= 1:
        for chunk in chunks:
            yield run_jobs(chunk, cache_dir)
        return
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"), initializer=_init_worker,
                               initargs=(os.getpid(),))
    try:
        futures = {pool.submit(run_jobs, chunk, cache_dir): chunk for chunk in chunks}
        remaining = set(futures)
        while remaining:
            done, remaining = wait(remaining, return_when=FIRST_COMPLETED)
            for future in done:
                try:
                    results = future.result()
                except Exception as exc:  # a worker died (e.g. killed for memory)
                    results = [Result(job.utt["id"], errors=[("worker", _reason(exc))]) for job in futures[future]]
                yield results
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _run_jobs_on_ray(jobs: list[Job], cache_dir: str) -> list[Result]:
    """A Ray task: one chunk on one CPU of any node (Ray owns its worker processes)."""
    _one_thread()
    return run_jobs(jobs, cache_dir)


def run_ray(chunks: list[list[Job]], workers: int, cache_dir: str, address: str | None = None) -> Iterator[list[Result]]:
    """Run each chunk as a Ray task with one CPU and yield its results as tasks finish.

    `address` is a running cluster ("auto", "HOST:6379", "ray://HOST:10001"); without one a
    local Ray instance with `workers` CPUs is started and shut down afterwards. Every node
    writes into the store itself, so the store must lie on a filesystem all nodes share, at
    the same path. A task that fails as a whole fails its chunk's utterances (stage
    "worker"), as a dead process worker does; closing the generator cancels the rest."""
    if not chunks:
        return  # nothing to compute: no cluster to reach
    try:
        import ray
    except ImportError:
        raise ConfigError("--engine ray needs Ray: pip install 'emofuse[cluster]'") from None
    started = not ray.is_initialized()
    if started:
        _check_reachable(address)
        try:
            if address:
                ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
            else:
                ray.init(num_cpus=max(1, workers), include_dashboard=False, logging_level=logging.WARNING,
                         log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = f"the Ray cluster at {address}" if address else "a local Ray instance"
            raise ConfigError(f"cannot start or reach {where}: {_reason(exc)}") from None
    task = ray.remote(num_cpus=1)(_run_jobs_on_ray)
    chunk_of = {task.remote(chunk, cache_dir): chunk for chunk in chunks}
    remaining = list(chunk_of)
    try:
        while remaining:
            done, remaining = ray.wait(remaining, num_returns=1)
            for ref in done:
                try:
                    results = ray.get(ref)
                except Exception as exc:  # the task's worker or node died
                    results = [Result(job.utt["id"], errors=[("worker", _reason(exc))]) for job in chunk_of[ref]]
                yield results
    except BaseException:
        for ref in remaining:
            ray.cancel(ref, force=True)
        raise
    finally:
        if started:
            ray.shutdown()


def _check_reachable(address: str | None, timeout: float = 10.0) -> None:
    """One clear line for a cluster address nobody answers at (Ray itself retries for minutes)."""
    match = re.fullmatch(r"(?:ray://)?\[?([^\]/]+?)\]?:(\d+)", address or "")
    if match is None:  # "auto" or no address: Ray finds or starts the cluster itself
        return
    try:
        socket.create_connection((match[1], int(match[2])), timeout=timeout).close()
    except OSError as exc:
        raise ConfigError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None


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


def parse_shard(text: str) -> tuple[int, int]:
    """`K/N` (1 <= K <= N): part K of N, e.g. `--shard $SLURM_ARRAY_TASK_ID/8` with `--array=1-8`."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise ConfigError(f"--shard {text!r} must be K/N with 1 <= K <= N, e.g. 2/8")
    return int(match[1]), int(match[2])


def shard_of(utterance_id: str, shards: int) -> int:
    """The 1-based shard of an utterance: a SHA-256 of its id, the same on every machine and
    run (Python's hash() of a string changes from one process to the next)."""
    digest = hashlib.sha256(utterance_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % shards + 1


def in_shard(utterances: Sequence[Utterance], shard: tuple[int, int] | None) -> list[Utterance]:
    """The utterances of shard K of N; N runs, one per shard, cover each utterance exactly once."""
    if shard is None:
        return list(utterances)
    k, n = shard
    return [utt for utt in utterances if shard_of(utt.id, n) == k]


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
