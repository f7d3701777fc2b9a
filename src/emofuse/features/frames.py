"""Frame features on a 10 ms hop, so frame t lines up with word times t * 0.01 s.

Every extractor turns 16 kHz mono audio of N samples into a (T, D) float32 matrix with
T = max(1, N // 160): frame t summarises [t * 10 ms, (t + 1) * 10 ms) with its analysis
window centred there (see `align.vad.frame_signal`). Extractors are registered by name with a
`settings` dict; the feature store keys its entries by a hash of those settings.

- ``compare_lld`` (130-d): openSMILE ComParE 2016 low-level descriptors (65) and their
  deltas (65), as in Aguilar et al. 2019. One openSMILE pass computes both (a config that
  concatenates the LLD and delta levels of the stock ComParE_2016 config); values equal the
  stock `LowLevelDescriptors` and `LowLevelDescriptors_Deltas` outputs frame for frame.
- ``fbank40`` (40-d): log mel filterbank, 25 ms Hamming window, 512-point FFT, pre-emphasis
  0.97 within each frame (as Kaldi), HTK mel scale 0-8 kHz (Li et al. 2021, FG_CME, §4.3).
- ``spectrogram8k`` (200-d): the convolutional attention network's input (Lee et al.
  2018, §3.2): audio resampled to 8 kHz, STFT with a Hamming window of 800 samples, magnitude
  in dB. The paper gives a 200 x 400 input covering 0-4 kHz; its hop is not stated, so we use
  10 ms (80 samples) like every other feature and pool the 400 bins below Nyquist in pairs:
  200 bins of 20 Hz covering 0-4 kHz. Models crop or pad time to 400 frames themselves.
- ``waveform`` (160-d): the raw 16 kHz samples, 160 per 10 ms frame; reshape (T, 160) to
  (T * 160,) for an end-to-end front end.

``whisper[:PATH][#pad=30]``: Whisper's encoder through CTranslate2 (`features.whisper`), the
packaged tiny.en by default, on its own 20 ms grid.

``hf:PATH[#layer=K|#layers=all]``: a local pretrained speech encoder on its own 20 ms grid
(`features.hf`, imported only when used; `FrameFeature.hop` says the grid).

`speech_mask` gives the per-frame speech mask: frames inside words when word times exist,
else energy-based (`align.vad.energy_speech_mask`).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from functools import lru_cache
from importlib.metadata import version
from pathlib import Path
from typing import Callable

import numpy as np

from emofuse.align import word_frame_matrix
from emofuse.align.vad import energy_speech_mask, frame_signal
from emofuse.errors import ConfigError
from emofuse.features.audio import resample
from emofuse.features.frame_feature import FrameFeature
from emofuse.io import atomic_write_text

SAMPLE_RATE = 16000
HOP = 0.01


# ---------------------------------------------------------------------------- compare_lld

_COMPARE_LEVELS = "is13_lld_nzsmo;is13_lldA_smo;is13_lldB_smo;is13_lld_nzsmo_de;is13_lldA_smo_de;is13_lldB_smo_de"


def _compare_config() -> Path:
    """Write (once, atomically) the one-pass LLD + delta config next to the stock one's includes."""
    import opensmile

    root = Path(opensmile.__file__).parent / "core" / "config"
    text = (
        "[componentInstances:cComponentManager]\n"
        "instance[dataMemory].type=cDataMemory\n\n"
        "\\{\\cm[source{?}:include external source]}\n\n"
        f"\\{{{root / 'compare' / 'ComParE_2016_core.lld.conf.inc'}}}\n\n"
        "[componentInstances:cComponentManager]\n"
        "instance[emofuse_lld_de].type=cVectorConcat\n\n"
        "[emofuse_lld_de:cVectorConcat]\n"
        f"reader.dmLevel = {_COMPARE_LEVELS}\n"
        "writer.dmLevel = lld_de_all\n"
        "includeSingleElementFields = 1\n\n"
        "\\{\\cm[sink{?}:include external sink]}\n"
    )
    folder = Path(tempfile.gettempdir()) / "emofuse-opensmile"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"compare2016_lld_de_{hashlib.sha1(text.encode()).hexdigest()[:12]}.conf"
    if not path.exists():
        atomic_write_text(path, text)
    return path


@lru_cache(maxsize=1)
def _smile():
    import opensmile

    return opensmile.Smile(feature_set=str(_compare_config()), feature_level="lld_de_all")


def _run_smile(signal: np.ndarray) -> np.ndarray:
    """(T', D) float32 frames of one mono 16 kHz signal through openSMILE's own API.

    The same steps as `opensmile.Smile.process_signal` for one channel (same options, the
    same int16 conversion, one engine per call), minus the audinterface/pandas wrapping
    around them, which costs ~10 ms per call; `tests/test_features_frames.py` checks the
    values are identical to process_signal's.
    """
    from opensmile.core.config import config

    smile_def = _smile()
    pcm = (signal * 32768).astype(np.int16)
    options = smile_def._options()
    options["source"] = os.path.join(smile_def.default_config_root, config.EXTERNAL_INPUT_CONFIG)
    options["sampleRate"] = SAMPLE_RATE
    options["nBits"] = 16
    rows: list[np.ndarray] = []
    engine = smile_def._smile(options=options)
    try:
        engine.external_sink_set_callback_ex(config.EXTERNAL_OUTPUT_COMPONENT, lambda data, meta: rows.append(data.copy()))
        engine.external_audio_source_write_data(config.EXTERNAL_SOURCE_COMPONENT, pcm.tobytes())
        engine.external_audio_source_set_eoi(config.EXTERNAL_SOURCE_COMPONENT)
        engine.run()
    finally:
        engine.free()
    if not rows:
        return np.zeros((1, 130), dtype=np.float32)  # never seen: the caller repeats it to T frames
    return np.vstack(rows).astype(np.float32)


def _compare_lld(y: np.ndarray) -> np.ndarray:
    hop = int(HOP * SAMPLE_RATE)
    num_frames = max(1, len(y) // hop)
    # The longest ComParE window is 60 ms; pad 25 ms on the left so frame t is centred on
    # (t + 0.5) * 10 ms, and enough on the right that openSMILE emits all T frames.
    left = (960 - hop) // 2
    needed = num_frames * hop + 960
    right = needed - left - len(y)
    mode = "reflect" if len(y) > max(left, right) else "constant"
    padded = np.pad(y, (left, right), mode=mode).astype(np.float32)
    values = _run_smile(padded)  # (T', 130)
    if len(values) < num_frames:  # never seen; keep the grid whole rather than fail
        values = np.concatenate([values, np.repeat(values[-1:], num_frames - len(values), axis=0)])
    return values[:num_frames]


# -------------------------------------------------------------------------------- fbank40


def _hz_to_mel(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz) / 700.0)


def _mel_to_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel) / 2595.0) - 1.0)


@lru_cache(maxsize=8)
def mel_filterbank(n_mels: int, n_fft: int, sr: int, fmin: float, fmax: float) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) triangular filters, equally spaced on the HTK mel scale."""
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    freqs = np.linspace(0.0, sr / 2.0, n_fft // 2 + 1)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs[None, :] - lower) / (centre - lower)
    falling = (upper - freqs[None, :]) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


FBANK = {"win": 400, "hop": 160, "n_fft": 512, "n_mels": 40, "window": "hamming",
         "preemphasis": 0.97, "preemphasis_per": "frame", "fmin": 0.0, "fmax": 8000.0, "mel": "htk", "log_floor": 1e-10}


BLOCK = 2048  # frames per FFT block: bounds memory on long files (10 min = 60,000 frames)


def _power_spectrum(frames: np.ndarray, n_fft: int, reduce, preemphasis: float = 0.0) -> np.ndarray:
    """reduce(|rfft(preemphasised frame * hamming)|^2) block by block; (T, win) -> (T, D).

    Pre-emphasis is applied within each frame as Kaldi does (x[n] - a x[n-1], and
    x[0] - a x[0] for the first sample), so no emphasised copy of a long signal is made.
    """
    window = np.hamming(frames.shape[1]).astype(np.float32)
    out = []
    for i in range(0, len(frames), BLOCK):
        block = np.array(frames[i : i + BLOCK], dtype=np.float32)  # (B, win), a copy
        if preemphasis:
            block[:, 1:] -= preemphasis * block[:, :-1]
            block[:, 0] *= 1.0 - preemphasis
        spectrum = np.fft.rfft(block * window, n=n_fft)  # (B, n_fft // 2 + 1)
        out.append(reduce((spectrum.real**2 + spectrum.imag**2).astype(np.float32)))
    return np.concatenate(out)


def _fbank40(y: np.ndarray) -> np.ndarray:
    s = FBANK
    frames = frame_signal(y, s["win"], s["hop"])  # (T, 400), a strided view
    filters = mel_filterbank(s["n_mels"], s["n_fft"], SAMPLE_RATE, s["fmin"], s["fmax"]).T  # (257, 40)
    mel = _power_spectrum(frames, s["n_fft"], lambda power: power / s["n_fft"] @ filters, s["preemphasis"])  # (T, 40)
    return np.log(np.maximum(mel, s["log_floor"]))


# -------------------------------------------------------------------------- spectrogram8k

SPECTROGRAM = {"sample_rate": 8000, "win": 800, "hop": 80, "n_fft": 800, "window": "hamming",
               "scale": "dB", "freq_bins": 200, "pooling": "mean power of adjacent bin pairs",
               "db_floor": -100.0}


def _spectrogram8k(y: np.ndarray) -> np.ndarray:
    s = SPECTROGRAM
    num_frames = max(1, len(y) // int(HOP * SAMPLE_RATE))
    y8 = resample(y, SAMPLE_RATE, s["sample_rate"])
    frames = frame_signal(y8, s["win"], s["hop"], num_frames)  # (T, 800), a strided view
    bins, group = s["freq_bins"], (s["n_fft"] // 2) // s["freq_bins"]

    def pool(power):  # (B, 401) -> (B, 200): adjacent bin pairs below Nyquist
        return power[:, : group * bins].reshape(len(power), bins, group).mean(-1)

    pooled = _power_spectrum(frames, s["n_fft"], pool)  # (T, 200)
    return np.maximum(10.0 * np.log10(pooled + 1e-20), s["db_floor"])


# ------------------------------------------------------------------------------- waveform


def _waveform(y: np.ndarray) -> np.ndarray:
    hop = int(HOP * SAMPLE_RATE)
    num_frames = max(1, len(y) // hop)
    y = np.pad(y, (0, max(0, num_frames * hop - len(y))))
    return y[: num_frames * hop].reshape(num_frames, hop)  # (T, 160)


# ------------------------------------------------------------------------------- registry

_BUILDERS: dict[str, Callable[[], FrameFeature]] = {
    "compare_lld": lambda: FrameFeature(
        "compare_lld", 130, HOP,
        {"opensmile": version("opensmile"), "feature_set": "ComParE_2016", "levels": "LLD+deltas", "pad_left_ms": 25},
        _compare_lld, prepare=_smile,
    ),
    "fbank40": lambda: FrameFeature("fbank40", 40, HOP, dict(FBANK), _fbank40),
    "spectrogram8k": lambda: FrameFeature("spectrogram8k", 200, HOP, dict(SPECTROGRAM), _spectrogram8k),
    "waveform": lambda: FrameFeature("waveform", 160, HOP, {"sample_rate": SAMPLE_RATE, "per_frame": 160}, _waveform),
}


def frame_feature_names() -> list[str]:
    return list(_BUILDERS)


def is_frame_feature(name: str) -> bool:
    """A built-in name, whisper[:PATH] (`features.whisper`), or hf:PATH whose folder holds a
    speech encoder (`features.hf`)."""
    if _is_whisper(name):
        return True
    if name.startswith("hf:"):
        from emofuse.features.hf_folder import is_speech_encoder

        return is_speech_encoder(name)
    return name in _BUILDERS


def frame_layers(name: str | None) -> int:
    """Encoder layers stacked in each frame of `name` (hf:PATH#layers=all), else 0."""
    if name is None or not name.startswith("hf:"):
        return 0
    from emofuse.features.hf_folder import stacked_layers

    return stacked_layers(name)


def _is_whisper(name: str) -> bool:
    head = name.partition("#")[0]
    return head == "whisper" or head.startswith("whisper:")


def get_frame_feature(name: str) -> FrameFeature:
    if _is_whisper(name):  # Whisper's encoder through CTranslate2, 20 ms frames
        from emofuse.features.whisper import whisper_frame_feature

        return whisper_frame_feature(name)
    if name.startswith("hf:"):  # a local wav2vec2/HuBERT/WavLM/data2vec-audio/Whisper folder, 20 ms frames
        from emofuse.features.hf import speech_frame_feature

        return speech_frame_feature(name)
    try:
        return _BUILDERS[name]()
    except KeyError:
        raise ConfigError(f"unknown frame feature {name!r}; known: {', '.join(_BUILDERS)}") from None


def speech_mask(
    num_frames: int,
    hop: float = HOP,
    word_times: np.ndarray | None = None,
    audio: np.ndarray | None = None,
    sr: int = SAMPLE_RATE,
) -> np.ndarray:
    """(T,) bool speech mask: frames inside any word when word times are given (and there
    are words), else energy-based from `audio`; all True when neither is available."""
    if word_times is not None and len(word_times) and np.all(np.isfinite(word_times)):
        return word_frame_matrix(word_times, num_frames, hop).any(axis=0)
    if audio is not None:
        return energy_speech_mask(audio, sr, hop, num_frames)
    return np.ones(num_frames, dtype=bool)
