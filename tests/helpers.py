"""Builders shared by the test modules: tiny audio, tiny corpora, tiny trained runs, model
directories, a page served in a thread. Fixtures live in tests/conftest.py; this module holds
what a test imports by name (`from helpers import tone`), so no test module imports another.

Only the standard library and numpy at the top: torch, lightning and the training package
are imported inside the builders that need them, so collecting the corpus and feature tests
never loads torch.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

# ---------------------------------------------------------------- audio


def tone(seconds: float = 0.5, sr: int = 16000, freq: float = 220.0, channels: int = 1) -> np.ndarray:
    """A voiced-like signal: a harmonic tone with a little noise (real audio, not zeros)."""
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(0)
    y = 0.3 * np.sin(2 * np.pi * freq * t) + 0.1 * np.sin(2 * np.pi * 2 * freq * t)
    y = (y + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
    if channels > 1:
        y = np.stack([y] * channels, axis=1)
    return y


STREAMINFO_TOTAL = slice(18, 26)  # bytes of FLAC STREAMINFO holding rate | channels | bits | total samples


def silent_flac(path: Path, seconds: int, sr: int = 48_000, channels: int = 2) -> Path:
    """A long, silent, fast-to-write FLAC: written a minute at a time, at the fastest level."""
    import soundfile as sf

    block = np.zeros((sr * 60, channels), np.int16)
    with sf.SoundFile(str(path), "w", sr, channels, subtype="PCM_16", format="FLAC", compression_level=0) as out:
        for start in range(0, seconds, 60):
            out.write(block[: (min(seconds, start + 60) - start) * sr])
    return path


def set_flac_total_samples(path: Path, total: int) -> None:
    """Rewrite the total-samples field of STREAMINFO (0 means "unknown" in the FLAC format)."""
    data = bytearray(path.read_bytes())
    assert data[:4] == b"fLaC"
    packed = int.from_bytes(data[STREAMINFO_TOTAL], "big")
    packed = (packed & ~((1 << 36) - 1)) | total
    data[STREAMINFO_TOTAL] = packed.to_bytes(8, "big")
    path.write_bytes(bytes(data))


def alac_files(root: Path) -> dict[str, Path]:
    """An honest 1 s ALAC recording (FFmpeg's 4096-sample frames) in MP4 and Matroska, and the
    ALAC bomb of "Trust, second round", item 1 (shared/probe/alac_bomb.py): the same MP4 whose
    magic cookie declares frames of 4096 x 4096 samples x 8 channels, and whose first packet
    decodes to one such frame (512 MB as 32-bit samples) from 6.7 KB of run-length-coded zeros;
    plus its Matroska copy (its first packets only), which a WebM stream's demuxer takes."""
    import struct

    import av

    rate, files = 16_000, {}
    files["honest.m4a"] = root / "honest.m4a"
    y = tone(1.0, sr=rate)
    with av.open(str(files["honest.m4a"]), "w", format="mp4") as out:
        stream = out.add_stream("alac", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(y[None], format="flt", layout="mono")
        frame.sample_rate = rate
        for converted in av.AudioResampler(format=stream.codec_context.format.name, layout="mono",
                                           rate=rate).resample(frame):
            out.mux(stream.encode(converted))
        out.mux(stream.encode(None))

    data = bytearray(files["honest.m4a"].read_bytes())
    with av.open(str(files["honest.m4a"])) as container:
        first = bytes(next(p for p in container.demux(container.streams.audio[0]) if p.size))
    first_at, cookie_at = data.find(first), data.find(struct.pack(">I", 36) + b"alac")
    samples, channels = 4096 * 4096, 8
    # ALACSpecificConfig: frameLength, compatibleVersion, bitDepth 24, pb, mb, kb, numChannels,
    # maxRun, maxFrameBytes, avgBitRate, sampleRate
    data[cookie_at:cookie_at + 36] = (struct.pack(">I", 36) + b"alac" + bytes(4) + struct.pack(
        ">IBBBBBBHIII", samples, 0, 24, 0, 0, 14, channels, 255, 0, 0, 4000))
    bits: list[int] = []

    def put(value: int, n: int) -> None:
        bits.extend((value >> k) & 1 for k in range(n - 1, -1, -1))

    for _ in range(channels):  # one single-channel element each
        put(0, 3); put(0, 4); put(0, 12); put(1, 1); put(0, 2); put(0, 1); put(samples, 32)  # noqa: E702 - SCE, size
        put(0, 8); put(0, 8); put(0, 4); put(1, 4); put(0, 3); put(0, 5)  # noqa: E702 - no decorrelation, order 0
        for _ in range(samples // 65536):
            put(0, 1); put(0x1FF, 9); put(0xFFFF, 16)  # noqa: E702 - a sample, then a run of 65535 zeros
    put(7, 3)  # END
    bits += [0] * (-len(bits) % 8)
    packet = bytes(int("".join(map(str, bits[i:i + 8])), 2) for i in range(0, len(bits), 8))
    assert first_at > 0 and cookie_at > 0 and len(packet) <= len(first), (len(packet), len(first))
    data[first_at:first_at + len(first)] = packet + bytes(len(first) - len(packet))
    files["bomb.m4a"] = root / "bomb.m4a"
    files["bomb.m4a"].write_bytes(bytes(data))

    for name in ("honest", "bomb"):  # Matroska copies: the EBML magic a WebM stream starts with
        files[f"{name}.mkv"] = root / f"{name}.mkv"
        with av.open(str(files[f"{name}.m4a"])) as source, \
                av.open(str(files[f"{name}.mkv"]), "w", format="matroska") as out:
            target = out.add_stream_from_template(source.streams.audio[0])
            for k, packet in enumerate(source.demux(source.streams.audio[0])):
                if packet.dts is None:
                    continue
                packet.stream = target
                out.mux(packet)
                if name == "bomb" and k >= 2:
                    break
    return files


def make_corpus(tmp_path: Path, n: int = 3):
    """n utterances: silence, a tone of growing length, silence; two words each."""
    import soundfile as sf

    from emofuse.corpora.base import Corpus, Utterance

    utterances = []
    for i in range(n):
        y = np.concatenate([np.zeros(3200, np.float32), tone(0.4 + 0.2 * i, freq=150.0 + 50 * i),
                            np.zeros(3200, np.float32)])
        path = tmp_path / f"u{i}.wav"
        sf.write(path, y, 16000)
        utterances.append(Utterance(id=f"u{i}", audio=str(path), speaker=f"s{i % 2}", label="x",
                                    original_label="x", transcript=f"door number {i + 1}"))
    return Corpus(utterances, name="tiny")


# ---------------------------------------------------------------- RAVDESS (real data)

CLASSES = ["angry", "happy", "neutral", "sad"]  # ravdess4, in the order of its label set
EMOTION_CODES = {"05": "angry", "03": "happy", "01": "neutral", "04": "sad"}
STATEMENT_1 = "Kids are talking by the door"
STATEMENT_2 = "Dogs are sitting by the door"


def ravdess_files(root: Path, actors=range(1, 7), statement: str = "01") -> list[Path]:
    """Normal-intensity, first-repetition files of the 4 ravdess4 classes for some actors."""
    out = []
    for actor in actors:
        for code in EMOTION_CODES:
            path = root / f"Actor_{actor:02d}" / f"03-01-{code}-01-{statement}-01-{actor:02d}.flac"
            if path.is_file():
                out.append(path)
    return out


def _tiny_corpus(root: Path):
    from emofuse.corpora.base import Corpus, Utterance

    utterances = []
    for path in ravdess_files(root):
        code = path.stem.split("-")
        utterances.append(Utterance(id=path.stem, audio=str(path), speaker=f"Actor_{code[6]}",
                                    label=EMOTION_CODES[code[2]], original_label=EMOTION_CODES[code[2]],
                                    transcript=STATEMENT_1 if code[4] == "01" else STATEMENT_2))
    return Corpus(utterances, name="ravdess-tiny")


def _train(root: Path, work: Path, model: dict, name: str, folds: tuple[int, ...]) -> Path:
    from emofuse.features.store import FeatureStore
    from emofuse.training.config import load_config
    from emofuse.training.data import LabelledData
    from emofuse.training.run import run_folds
    from emofuse.training.splits import make_folds

    corpus = _tiny_corpus(root)
    store = FeatureStore(work / "features")
    store.extract(corpus, ["fbank40", "glove50"], align="forced", workers=1, progress=False)
    items = store.load(corpus, acoustic="fbank40", words="glove50", align="forced")
    labels = np.asarray([CLASSES.index(u.label) for u in corpus])
    data = LabelledData(corpus, items, labels, tuple(CLASSES))
    run_dir = work / name
    for fold in folds:
        raw = {
            "name": name, "corpus": "ravdess-tiny", "seed": 0, "fold": fold,
            "data": {"manifest": "unused.jsonl", "label_set": "ravdess4", "acoustic": "fbank40",
                     "words": "glove50", "align": "forced"},
            "model": model,
            "optim": {"name": "adam", "lr": 0.01, "weight_decay": 0.0},
            "trainer": {"max_epochs": 2, "batch_size": 8, "patience": None, "progress": False,
                        "accelerator": "cpu", "threads": 1},
            "protocol": {"name": "speaker-kfold", "k": 3, "val_speakers": 1},
            "run_dir": str(run_dir),
        }
        cfg = load_config(None, [], raw=raw)
        run_folds(cfg, data, make_folds(corpus, "speaker-kfold", k=3, seed=0, val_speakers=1), run_dir,
                  log=lambda line: None)
    return run_dir


@functools.lru_cache(maxsize=None)
def trained_runs(ravdess: str) -> dict[str, Path]:
    """Two tiny runs trained through the real engine on 24 RAVDESS files (6 actors x 4 classes),
    fbank40 + GloVe-50 with forced alignment: H-MM-4 (folds 0 and 1) and the multi-view
    B-ACO-1 + H-MM-4 (fold 0). Trained once per test process, whichever module asks first."""
    import torch

    from emofuse.training.run import quiet_lightning

    quiet_lightning()
    work = Path(tempfile.mkdtemp(prefix="emofuse-inference-tests-"))
    atexit.register(shutil.rmtree, work, True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tiny = {"hidden": 8, "layers": 1, "dropout": 0.0}
        return {
            "H-MM-4": _train(Path(ravdess), work, {"name": "H-MM-4", "word_layers": 1, **tiny}, "hmm4", (0, 1)),
            "MV": _train(Path(ravdess), work, {"name": "MV-B-ACO-1+H-MM-4", **tiny}, "mv", (0,)),
        }
    finally:
        torch.set_num_threads(threads)


def registry_model_dir(out: Path, name: str = "H-MM-4", acoustic: str = "fbank40", words: str | None = "glove50",
                       seed: int = 0, normaliser: dict | None = None, **settings) -> Path:
    """A model directory of a registry model with random weights (a real network, untrained)."""
    import torch

    from emofuse.features.frames import get_frame_feature
    from emofuse.models.base import InputSpec, get_model
    from emofuse.models.modeldir import ModelInfo, write_model_dir

    torch.manual_seed(seed)
    entry = get_model(name)
    frame = get_frame_feature(acoustic)
    word_dim = {"glove50": 50, "minilm": 384}.get(words, 0) if words else 0
    spec = {"num_classes": 4, "acoustic_dim": frame.dim, "word_dim": word_dim, "vocab_size": 0}
    settings = {"hidden": 8, "layers": 1, "dropout": 0.0, **settings}
    model = entry.build(InputSpec(**spec), **settings)
    rng = np.random.default_rng(seed)
    reads_words = any(n in entry.needs for n in ("words", "word_frames", "token_ids"))
    info = ModelInfo(name=entry.name, settings=settings, spec=spec, needs=list(entry.needs), classes=CLASSES,
                     label_set="ravdess4", acoustic=acoustic, acoustic_settings=dict(frame.settings),
                     words=words if reads_words else None, align="auto" if reads_words else "none",
                     normaliser=normaliser or {"mean": rng.normal(0, 1, frame.dim).tolist(),
                                               "std": (1 + rng.random(frame.dim)).tolist()})
    return write_model_dir(out, model, info)


# ---------------------------------------------------------------- the training engine (synthetic)


def synthetic_data(speakers: int = 8, per_class: int = 3, dim: int = 6, seed: int = 0):
    """Frames whose mean depends on the class (learnable), lengths 12..30, genders alternate."""
    from emofuse.corpora.base import Corpus, Utterance
    from emofuse.features.batch import UtteranceFeatures
    from emofuse.training.data import LabelledData

    rng = np.random.default_rng(seed)
    utterances, items, labels = [], [], []
    for s in range(speakers):
        for c, name in enumerate(CLASSES):
            for r in range(per_class):
                uid = f"s{s}_{name}_{r}"
                t = int(rng.integers(12, 31))
                frames = rng.normal(0.0, 1.0, (t, dim)).astype(np.float32)
                frames[:, c % dim] += 2.5  # the class signal
                frames += 10.0  # an offset only normalisation removes
                utterances.append(Utterance(id=uid, audio=None, speaker=f"spk{s}", label=name, original_label=name,
                                            meta={"gender": "male" if s % 2 else "female"}))
                items.append(UtteranceFeatures(id=uid, acoustic=frames, acoustic_hop=0.01))
                labels.append(c)
    return LabelledData(Corpus(utterances, name="synthetic"), items, np.asarray(labels), tuple(CLASSES))


def tiny_config(tmp_path: Path, *overrides: str, model: str = "B-ACO-1"):
    """A resolved config for `synthetic_data`: a small model, 4 epochs, 4 speaker folds."""
    from emofuse.training.config import load_config

    raw = {
        "name": "tiny", "corpus": "synthetic",
        "data": {"manifest": "unused.jsonl", "label_set": "ravdess4", "acoustic": "compare_lld", "align": "none"},
        "model": {"name": model, "hidden": 8, "layers": 1, "dropout": 0.0},
        "optim": {"name": "adam", "lr": 0.02, "weight_decay": 0.0},
        "trainer": {"max_epochs": 4, "batch_size": 8, "patience": 10, "progress": False, "accelerator": "cpu"},
        "protocol": {"name": "speaker-kfold", "k": 4, "val_speakers": 1},
        "run_dir": str(tmp_path / "run"),
    }
    return load_config(None, list(overrides), raw=raw)


def folds_for(data, cfg):
    """The folds `cfg.protocol` makes on `data`'s corpus."""
    from emofuse.training.splits import make_folds

    p = cfg.protocol
    return make_folds(data.corpus, p.name, k=p.k, seed=cfg.seed, val_speakers=p.val_speakers)


# ---------------------------------------------------------------- the web page in a browser

CHROMIUM = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser", shutil.which("chromium") or "")
                 if p and Path(p).is_file()), None)
CHROMEDRIVER = next((p for p in ("/usr/bin/chromedriver", shutil.which("chromedriver") or "")
                     if p and Path(p).is_file()), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_page(model_dir):
    """uvicorn in a thread on a free port; yields the page's URL (use with `yield from` in a fixture)."""
    import uvicorn

    from emofuse.serving.app import ServeSettings, create_app

    app = create_app(model_dir, ServeSettings(workers=0, max_upload_mb=5, max_seconds=30))
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(timeout=10)


def chromium(profile: Path, *flags: str):
    """Headless Chromium driven by Selenium, with a fake microphone (a beep unless `flags` name a
    `--use-file-for-fake-audio-capture`) and no permission prompts; yields the driver (use with
    `yield from` in a fixture) and quits it afterwards."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1200,900",
                 "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
                 f"--user-data-dir={profile}", *flags):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()


# ---------------------------------------------------------------- long recordings


def joined_speech(clips, pauses, sr: int = 16000, tail: float = 1.0):
    """Real utterances, each cut to its speech span, joined after known pauses, with `tail`
    seconds of silence at the end and a faint room floor: (audio, truth), truth the (start, end)
    in seconds of each utterance in the joined recording.

    Each clip is cut to the span `align.vad.energy_speech_mask` finds in it alone (25 ms energy
    within 35 dB of the clip's loudest frame, above -70 dBFS), so speech starts and ends exactly
    at the joins."""
    import soundfile as sf

    from emofuse.align.vad import energy_speech_mask, speech_span

    rng = np.random.default_rng(0)
    parts, truth, pos = [], [], 0
    for clip, pause in zip(clips, pauses):
        y, rate = sf.read(clip, dtype="float32")
        assert rate == sr, f"{clip}: {rate} Hz, not {sr}"
        start, end = speech_span(energy_speech_mask(y, rate))
        y = y[int(start * sr): int(end * sr)]
        parts += [np.zeros(int(pause * sr), np.float32), y]
        pos += int(pause * sr)
        truth.append((pos / sr, (pos + len(y)) / sr))
        pos += len(y)
    audio = np.concatenate(parts + [np.zeros(int(tail * sr), np.float32)])
    audio += 1e-4 * rng.standard_normal(len(audio)).astype(np.float32)
    return audio, truth


# ---------------------------------------------------------------- tiny model inputs


def tiny_utterance(uid: str, frames: int, words: int, rng, acoustic_dim: int = 6, word_dim: int = 5):
    """Random acoustic frames (10 ms hop) and word vectors, the words spread evenly over the
    frames: an `UtteranceFeatures` for shape and padding tests of the models."""
    from emofuse.features.batch import UtteranceFeatures

    times = np.linspace(0.02, frames * 0.01 - 0.01, words + 1)
    return UtteranceFeatures(
        uid,
        acoustic=rng.standard_normal((frames, acoustic_dim)).astype(np.float32),
        words=[f"w{i}" for i in range(words)],
        word_times=np.stack([times[:-1], times[1:]], 1),
        word_vectors=rng.standard_normal((words, word_dim)).astype(np.float32),
    )


def fit_losses(model, batch, steps: int, lr: float = 1e-2) -> list[float]:
    """Train `model` on one batch with Adam for `steps` steps: the cross-entropy before each step
    (a toy task the model can learn shows it falling, so gradients reach every part)."""
    import torch

    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(batch).logits, batch.labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def two_class_batch(n: int, make):
    """A collated batch of `n` toy utterances labelled 0, 1, 0, 1, ...; `make(i, label)` builds
    each, putting the class somewhere the model can find it."""
    from emofuse.features.batch import collate

    labels = [i % 2 for i in range(n)]
    return collate([make(i, label) for i, label in enumerate(labels)], labels)


def model_from_config(path, spec):
    """(resolved config, the model it builds for `spec`) of one file under configs/."""
    from emofuse.models.base import get_model
    from emofuse.training.config import load_config

    cfg = load_config(path)
    return cfg, get_model(cfg.model_name).build(spec, **cfg.model_settings)


# ---------------------------------------------------------------- processes (Linux /proc)


def children(pid: int) -> dict[int, str]:
    """Live child processes of `pid` with their command lines (zombies count as gone)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            state, ppid = stat.rsplit(")", 1)[1].split()[:2]
            if int(ppid) == pid and state != "Z":
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue  # it ended while we looked
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# ---------------------------------------------------------------- `emofuse serve` as a real process


class ServeProcess:
    """`emofuse serve MODEL --port P ...` in its own process, ready once /health answers; use as a
    context manager (kill -9 on exit, so a failed test leaves no server behind)."""

    def __init__(self, model_dir: Path, *options: str, start_timeout: float = 240.0, handle: str | None = None):
        """handle: the name of a function in this module that the workers run on each job in place
        of `ProcessEngine.handle` (e.g. `hanging_answer`)."""
        import os
        import subprocess
        import sys

        import httpx

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        code = "from emofuse.cli import main; main()"
        if handle is not None:  # spawned workers inherit sys.path, so they import it from here too
            code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import helpers; "
                    "from emofuse.serving.workers import ProcessEngine; "
                    f"ProcessEngine.handle = staticmethod(helpers.{handle}); {code}")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, "serve", str(model_dir), "--port", str(self.port), *options],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        deadline = time.monotonic() + start_timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited {self.proc.returncode}: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                self.health = httpx.get(self.url + "/health", timeout=5).json()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError("serve did not answer /health in time") from None
                time.sleep(0.3)

    def get_health(self):
        import httpx

        return httpx.get(self.url + "/health", timeout=30)

    def post(self, path: Path, transcript: str | None = None, timeout: float = 120):
        import httpx

        data = {"transcript": transcript} if transcript else None
        return httpx.post(self.url + "/predict", files={"file": (path.name, path.read_bytes())}, data=data,
                          timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def until(condition, seconds: float, step: float = 0.05):
    """`condition()`'s first true value within `seconds`, else its last value."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(step)
    return condition()


def reaped(pid: int) -> bool:
    """Whether `pid` is gone from the process table: ended and reaped, not left a zombie."""
    return not Path(f"/proc/{pid}").exists()


def exited_child(pid: int) -> bool:
    """Whether our child `pid` has exited and can be reaped (not reaping it). Stricter than `alive`:
    a killed multithreaded process shows 'Z' while its other threads still exit, and until then
    waitpid, which the service's engine uses, still sees it running."""
    import os

    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:  # already reaped
        return True


# ---------------------------------------------------------------- pool workers
# Spawned workers import these by name (they inherit sys.path): a test makes a worker hang,
# die or fork here, never through production code.


def pool_setup(tag: str = "ready") -> str:
    return tag


def pool_handle(state, job: tuple, progress):
    """A test pool's job: ("echo", x) -> (state, x); ("pid",) -> the worker's pid; ("hang", mark)
    writes the worker's pid to `mark` and sleeps a day, as a deadlocked worker would; ("steps", n,
    pause) reports progress n times, `pause` s apart; ("raise", line) raises ValueError(line);
    ("unpicklable",) returns what cannot be sent back."""
    import os

    what, *args = job
    if what == "echo":
        return state, args[0]
    if what == "pid":
        return os.getpid()
    if what == "hang":
        Path(args[0]).write_text(str(os.getpid()))
        time.sleep(24 * 3600)
    if what == "steps":
        for step in range(args[0]):
            time.sleep(args[1])
            progress(step)
        return args[0]
    if what == "raise":
        raise ValueError(args[0])
    if what == "unpicklable":
        return lambda: None
    raise AssertionError(f"unknown test job {what!r}")


def forking_setup():
    """A worker that forks a child of its own (as the Predictor forks openSMILE's) and reports it."""
    import os

    from emofuse.pool import Ready

    child = os.fork()
    if child == 0:
        time.sleep(3600)
        os._exit(0)
    return Ready("forked", info={"child": child}, children=(child,))


def failing_setup():
    from emofuse.errors import DataError

    raise DataError("/srv/emofuse/models/secret-model", "model.json is missing")


def hanging_answer(predictor, job, progress):
    """`ProcessEngine.handle` for tests: a file named hangs*.wav sleeps a day on its worker (after
    writing the worker's pid to TMP/NAME.reached); any other is answered as the service does."""
    import os
    import tempfile

    from emofuse.serving.workers import answer_job

    if job.name.startswith("hangs"):
        (Path(tempfile.gettempdir()) / f"{job.name}.reached").write_text(str(os.getpid()))
        time.sleep(24 * 3600)
    return answer_job(predictor, job, progress)


def hanging_chunk(cache_dir: str, jobs, progress):
    """`extract._run_chunk` for tests: the chunk holding utterance u2 sleeps a day on its worker
    (after writing the worker's pid to CACHE_DIR/hang.reached); any other is extracted."""
    import os

    from emofuse.features.store.extract import run_jobs

    if any(job.utt["id"] == "u2" for job in jobs):
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        (Path(cache_dir) / "hang.reached").write_text(str(os.getpid()))
        time.sleep(24 * 3600)
    return run_jobs(jobs, cache_dir)


def hanging_batch(predictor, chunk, progress):
    """`folder._predict_batch` for tests: a batch holding a file named hangs*.wav sleeps a day on
    its worker (after writing the worker's pid beside it, as .reached); any other is predicted."""
    import os

    from emofuse.inference.folder import _predict_batch

    for _, (path, _transcript) in chunk:
        if Path(path).name.startswith("hangs"):
            Path(path).with_suffix(".reached").write_text(str(os.getpid()))
            time.sleep(24 * 3600)
    return _predict_batch(predictor, chunk, progress)


def end_all(parent, pids) -> None:
    """Test cleanup: the parent process (a Popen) and every pid still alive, killed."""
    import os
    import signal

    if parent.poll() is None:
        parent.kill()
        parent.wait()
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def oserror_setup():
    """A worker setup that fails with an error of no emofuse type (a missing shared library)."""
    raise OSError("libsecret.so: cannot open shared object file")


def raising_chunk(cache_dir: str, jobs, progress):
    """`extract._run_chunk` for tests: the chunk holding utterance u2 raises (as torch might, out
    of memory); any other is extracted."""
    from emofuse.features.store.extract import _run_chunk

    if any(job.utt["id"] == "u2" for job in jobs):
        raise RuntimeError("CUDA out of memory (for tests)")
    return _run_chunk(cache_dir, jobs, progress)
