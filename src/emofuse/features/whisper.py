"""Whisper encoder frames through CTranslate2 (`align.whisper` loads the model; the recogniser
shares it in one process).

Spelling (``data.acoustic``)::

    whisper                 the packaged tiny.en's encoder, last layer (384-d)
    whisper:PATH            any CTranslate2 Whisper folder (`align.whisper`)
    whisper#pad=30          each clip padded to Whisper's 30 s window, as it was trained; the
                            default encodes the clip at its own length

Frames are 20 ms apart with a 65 ms receptive field centred on t * 20 ms (Whisper's two convs
over its centred STFT, `features.frame_grid.FrameGeometry`): 10 ms before the hop grid's centre,
carried as `centre_offset` to word spans, trim and the speech mask.

Own length versus 30 s: the mel frames of the clip, rounded up to an even count (the second
conv has stride 2), go through the encoder as they are. Whisper's encoder was trained on 30 s
windows only; the frames of a clip encoded alone differ from the same frames inside a padded
window (mean absolute difference 0.23 against a mean magnitude of 0.77 on a RAVDESS clip), and
encoding the clip alone costs about a tenth as much. ``#pad=30`` gives the padded encoding;
`benchmarks/RESULTS.md` reports both.

Audio longer than 30 s is cut into 30 s chunks overlapping by 3 s on the encoder's frame grid
(`features.frame_grid.chunk_plan`: each frame from the chunk in which it sits furthest from an edge),
from one log-mel computation over the whole recording. A frame then differs from what one
longer window would give by more than the context its chunk lacks: Whisper's encoder adds a
positional embedding to every frame, so a frame placed elsewhere in its window comes out
different. On 20 s of RAVDESS speech cut into 10 s chunks with 2 s of overlap, the relative RMS
difference to the unchunked frames is 0.60: 0.10-0.14 in the first chunk (same positions, less
context), 0.75-0.88 in the later ones; CHUNK_TOLERANCE bounds it (tested). Whisper's own
decoding sees every 30 s window from position 0, as these chunks are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from emofuse.align import whisper as asr
from emofuse.errors import ConfigError
from emofuse.features.frame_feature import FrameFeature
from emofuse.features.frame_grid import chunk_plan, speech_geometry

SAMPLE_RATE = 16000
CHUNK_SECONDS = 30.0
OVERLAP_SECONDS = 3.0
CHUNK_TOLERANCE = 0.65  # relative RMS, chunked against unchunked: 0.60 measured (module docstring)


@dataclass(frozen=True)
class WhisperSpec:
    spec: str  # as written
    model: str  # "whisper" or "whisper:PATH", what `align.whisper` reads
    pad30: bool


def parse_spec(spec: str) -> WhisperSpec:
    model, _, options = spec.partition("#")
    if not asr.is_whisper(model):
        raise ConfigError(f"{spec!r} is not a Whisper frame feature: use whisper, whisper:PATH, whisper#pad=30")
    pad30 = False
    for option in filter(None, options.split("&")):
        key, _, value = option.partition("=")
        if key == "pad" and value in ("30", "none"):
            pad30 = value == "30"
        else:
            raise ConfigError(f"{spec!r}: unknown option {option!r}; known: pad=30, pad=none")
    return WhisperSpec(spec, model, pad30)


def is_whisper_feature(spec: str | None) -> bool:
    return isinstance(spec, str) and asr.is_whisper(spec.partition("#")[0])


class WhisperEncoder:
    """(N,) 16 kHz audio -> (T, D) float32 encoder frames, T = ceil((N // 160) / 2)."""

    def __init__(self, spec: str | WhisperSpec, chunk_seconds: float = CHUNK_SECONDS,
                 overlap_seconds: float = OVERLAP_SECONDS, threads: int | None = None):
        self.spec = parse_spec(spec) if isinstance(spec, str) else spec
        self.folder = asr.resolve_folder(self.spec.model)
        self.geometry = speech_geometry({"model_type": "whisper"}, 160, 400)
        self.chunk_frames = int(round(chunk_seconds / self.geometry.hop_seconds))
        self.overlap_frames = int(round(overlap_seconds / self.geometry.hop_seconds))
        window = asr.WINDOW_FRAMES // 2
        if not 0 < self.chunk_frames <= window:
            raise ConfigError(f"{self.spec.spec!r}: chunks of {chunk_seconds} s exceed Whisper's 30 s window")
        if not 0 <= self.overlap_frames < self.chunk_frames // 2:
            raise ConfigError(f"{self.spec.spec!r}: overlap must be >= 0 and under half a chunk")
        self.threads = threads
        self._dim = None

    @property
    def model(self):
        return asr.load_model(self.spec.model, self.threads)

    @property
    def dim(self) -> int:
        if self._dim is None:
            import json

            config = json.loads((self.folder / "config.json").read_text(encoding="utf-8"))
            # CTranslate2's Whisper config.json does not hold d_model: read it off one encoding
            self._dim = int(config.get("d_model") or self.encode(np.zeros(3200, dtype=np.float32)).shape[1])
        return self._dim

    @property
    def settings(self) -> dict:
        g = self.geometry
        return {"encoder": "whisper-ct2", **asr.model_settings(self.spec.model), "layer": "last",
                "window": "30 s padded" if self.spec.pad30 else "clip length (even mel frames)",
                "hop": g.hop_seconds, "receptive_field": g.receptive_field, "centre_offset": g.centre_offset,
                "chunk_frames": self.chunk_frames, "overlap_frames": self.overlap_frames}

    def num_frames(self, num_samples: int) -> int:
        return self.geometry.num_frames(num_samples)

    def warm(self) -> "WhisperEncoder":
        self.model  # noqa: B018 - load (and check) the weights now
        return self

    def encode(self, y: np.ndarray) -> np.ndarray:
        """(T, D) float32 frames of 16 kHz audio (module docstring)."""
        model = self.model
        y = np.asarray(y, dtype=np.float32).reshape(-1)
        mel = asr.log_mel(model, y)  # (n_mels, L)
        total = self.num_frames(len(y))
        out = None
        for first, lo, hi in chunk_plan(total, self.chunk_frames, self.overlap_frames):
            piece = mel[:, 2 * first: 2 * (first + self.chunk_frames)]
            frames = asr.WINDOW_FRAMES if self.spec.pad30 else max(2, piece.shape[1] + piece.shape[1] % 2)
            encoded = asr.encode_window(model, piece, frames)
            values = np.asarray(encoded)[0]  # (frames // 2, D)
            if out is None:
                out = np.zeros((total, values.shape[1]), dtype=np.float32)
            out[first + lo:first + hi] = values[lo:hi]
        return out


class WhisperFrameFeature(FrameFeature):
    """The `features.frame_feature.FrameFeature` of Whisper's encoder (module docstring)."""

    def __init__(self, spec: str, encoder: WhisperEncoder | None = None):
        encoder = encoder or WhisperEncoder(spec)
        super().__init__(spec, encoder.dim, encoder.geometry.hop_seconds, encoder.settings, encoder.encode,
                         prepare=encoder.warm)
        self.encoder = encoder

    def num_frames(self, num_samples: int) -> int:
        return self.encoder.num_frames(num_samples)

    def frame_times(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        return self.encoder.geometry.frame_times(n)

    @property
    def centre_offset(self) -> float:
        return self.encoder.geometry.centre_offset


def whisper_frame_feature(spec: str) -> WhisperFrameFeature:
    return WhisperFrameFeature(spec)


__all__ = ["WhisperEncoder", "WhisperFrameFeature", "is_whisper_feature", "parse_spec", "whisper_frame_feature"]
