"""Pretrained Hugging Face encoders from a local folder: speech frames and word vectors.

The spelling of ``hf:PATH[#layer=K|#layers=all]`` and how its folder is found and hashed:
`features.hf_folder`.

Speech (wav2vec2, HuBERT, WavLM, data2vec-audio through `AutoModel`; the Whisper encoder
through `WhisperModel.encoder` on `WhisperFeatureExtractor` log-mels). Frame times come from
the conv stack, not assumed: `FrameGeometry` (`features.frame_grid`) composes the kernels, strides and paddings
(``conv_kernel``/``conv_stride`` of the config; Whisper's two convs read off the loaded module
and checked) into the hop and each frame's receptive field, so frame t covers
``frame_times(n)[0][t] .. frame_times(n)[1][t]`` seconds: wav2vec2-style 20 ms hop, 25 ms
field starting at t * 20 ms (centre 2.5 ms after the 20 ms grid's); Whisper 20 ms hop, 65 ms
field centred on t * 20 ms (10 ms before the grid's).

Long audio is cut into chunks of ``chunk_seconds`` overlapping by ``overlap_seconds``, on the
frame grid, and stitched: each frame is taken from the chunk in which it sits furthest from
an edge (the overlap split in half). The conv features (hidden_states[0] of the wav2vec2
family) are then the same as unchunked to float rounding (1e-4) when the model's conv stack
normalises per frame (``feat_extract_norm="layer"``, data2vec-audio): the per-utterance input
normalisation (``do_normalize``) is applied to the whole utterance before cutting. Transformer
layers see only their chunk, so deeper layers differ by the context they lose (relative RMS
0.0017 on the 2-layer test model with 1 s chunks, tested below 0.01); with the
defaults (20 s chunks, 2 s overlap) only utterances longer than 20 s are cut at all.
Whisper always reads a fixed window (30 s for the released models): longer audio is chunked
the same way and only the frames of real audio are kept, never those of the padding.

Utterances are batched by length: chunks sorted by length, padded with an attention mask
where the model allows it (layer-norm conv stacks) and only equal lengths batched otherwise
(group norm spans the time axis, so padding would change the values); Whisper pads every
chunk to its window anyway. The store hands a worker's whole chunk of utterances to
`encode_many` (`HFFrameFeature.extract_many`), on the device `emofuse extract --device` or
`data.device` names ("auto": the GPU when torch sees one).

Frames meet word times at their real centres: `HFFrameFeature.centre_offset` travels with the
frames (`UtteranceFeatures.acoustic_centre_offset`) to the batch's word spans and speech mask.

Words (BERT, RoBERTa, DeBERTa, ELECTRA, any `AutoModel` text encoder): the words go in
pre-split (``is_split_into_words=True``; byte-level BPE tokenizers with
``add_prefix_space=True``); a word's vector is the mean of its word pieces' hidden states
(`word_ids()`). Sentences longer than the model's positions are encoded in consecutive
windows that restart at the last word of the previous window, which may have been cut.
A word that yields no piece gets zeros and is counted as out-of-vocabulary.

`transformers` is imported here only, and only when an hf: feature is used.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from emofuse.errors import ConfigError, DataError, EmofuseError
from emofuse.features.audio import resample
from emofuse.features.frame_feature import FrameFeature
from emofuse.features.frame_grid import _WHISPER_CONVS, FrameGeometry, chunk_plan, speech_geometry  # noqa: F401 -- FrameGeometry: callers read it here
from emofuse.features.hf_folder import (  # noqa: F401 -- callers import the spec and folder helpers from here
    PREFIX, SPEECH_TYPES, TEXT_TYPES, HFSpec, _check_layer, _hidden_size, _layer_count, identity, is_hf,
    is_speech_encoder, is_text_encoder, parse_spec, read_config, resolve_folder, stacked_layers, weights_hash,
)
from emofuse.features.hf_weights import require_safetensors

SAMPLE_RATE = 16000
_PREFIX_SPACE_TYPES = ("roberta", "deberta", "longformer")  # byte-level BPE: words need a leading space
_MISSING = 'hf: features need the transformers library: pip install "emofuse[hf]"'


def _transformers():
    try:
        import transformers
    except ImportError:
        raise EmofuseError(_MISSING) from None
    return transformers


def _select(hidden_states, spec: HFSpec):
    """(B, T, D) for one layer or the last, (B, T, N + 1, D) for all, from N + 1 hidden states."""
    import torch

    if spec.layers == "all":
        return torch.stack(hidden_states, dim=2)
    return hidden_states[spec.layer if spec.layers == "one" else -1]


def resolve_device(device: str | None) -> str:
    """"auto" (or None): cuda when available, else cpu; "cuda" without a GPU is a ConfigError."""
    import torch

    device = device or "auto"
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but torch sees no CUDA device")
    return device


# --------------------------------------------------------------------------- speech frames


class HFSpeechEncoder:
    """Frame features from a local wav2vec2/HuBERT/WavLM/data2vec-audio/Whisper folder
    (module docstring). `encode_many` batches; `encode` is one utterance."""

    def __init__(self, spec: str | HFSpec, device: str | None = "cpu", chunk_seconds: float | None = None,
                 overlap_seconds: float | None = None, batch_size: int = 8):
        self.spec = parse_spec(spec) if isinstance(spec, str) else spec
        self.folder = resolve_folder(self.spec.path)
        self.config = read_config(self.folder)
        self.model_type = self.config["model_type"]
        if self.model_type not in SPEECH_TYPES:
            raise ConfigError(f"{self.spec.spec!r}: model_type {self.model_type!r} is not a speech encoder; "
                              f"known: {', '.join(SPEECH_TYPES)}")
        self.whisper = self.model_type == "whisper"
        self.preprocessor = _read_preprocessor(self.folder)
        if self.whisper:
            hop_length = int(self.preprocessor.get("hop_length", 160))
            self.geometry = speech_geometry(self.config, hop_length, int(self.preprocessor.get("n_fft", 400)))
            self.window_frames = int(self.config["max_source_positions"])  # encoder frames in one input window
            default_chunk = self.window_frames * self.geometry.hop_seconds
        else:
            self.geometry = speech_geometry(self.config)
            self.window_frames = None
            default_chunk = 20.0
        self.num_layers = _layer_count(self.config)
        _check_layer(self.spec, self.num_layers)
        self.hidden_size = _hidden_size(self.config)
        self.dim = self.hidden_size * (self.num_layers + 1 if self.spec.layers == "all" else 1)
        self.chunk_frames = int(round((chunk_seconds or default_chunk) / self.geometry.hop_seconds))
        if overlap_seconds is None:  # a tenth of a chunk: 2 s of 20 s, 3 s of Whisper's 30 s
            overlap_seconds = self.chunk_frames * self.geometry.hop_seconds / 10
        self.overlap_frames = int(round(overlap_seconds / self.geometry.hop_seconds))
        if self.whisper and self.chunk_frames > self.window_frames:
            raise ConfigError(f"{self.spec.spec!r}: chunks of {chunk_seconds} s exceed Whisper's "
                              f"{default_chunk:g} s window")
        if not 0 <= self.overlap_frames < self.chunk_frames // 2:
            raise ConfigError(f"{self.spec.spec!r}: overlap must be >= 0 and under half a chunk "
                              f"({overlap_seconds} s overlap, {self.chunk_frames * self.geometry.hop_seconds:g} s chunks)")
        norm = self.config.get("feat_extract_norm", "layer")  # data2vec-audio: layer norm per conv
        self.pad_batches = self.whisper or norm == "layer"
        self.do_normalize = bool(self.preprocessor.get("do_normalize", norm == "layer")) if not self.whisper else False
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self._model = None
        self._extractor = None

    @property
    def hop(self) -> float:
        return self.geometry.hop_seconds

    @property
    def num_hidden_states(self) -> int:
        return self.num_layers + 1

    @property
    def settings(self) -> dict:
        """What identifies the values (the store key): weights, layers, frame geometry, chunking."""
        g = self.geometry
        return {
            "encoder": "hf", "model_type": self.model_type, "weights_sha256": weights_hash(self.folder),
            "layers": self.spec.layers if self.spec.layers != "one" else self.spec.layer,
            "num_hidden_states": self.num_hidden_states, "hidden_size": self.hidden_size,
            "hop": g.hop_seconds, "receptive_field": g.receptive_field, "frame0_start": g.first / g.sr,
            "centre_offset": g.centre_offset, "do_normalize": self.do_normalize,
            "chunk_frames": self.chunk_frames, "overlap_frames": self.overlap_frames,
        }

    def frame_times(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        return self.geometry.frame_times(n)

    def num_frames(self, num_samples: int) -> int:
        if self.whisper:
            return self.geometry.num_frames(num_samples)
        return self.geometry.num_frames(max(num_samples, self.geometry.width))  # short audio is padded

    # Loading ---------------------------------------------------------------------------
    def warm(self) -> "HFSpeechEncoder":
        self._load()
        return self

    def _load(self):
        if self._model is not None:
            return self._model
        require_safetensors(self.folder)  # a pickle checkpoint runs code when loaded: refused in one line
        transformers = _transformers()
        kwargs = {"local_files_only": True}
        if self.whisper:
            model = transformers.WhisperModel.from_pretrained(self.folder, **kwargs).encoder
            convs = tuple((m.kernel_size[0], m.stride[0], m.padding[0]) for m in (model.conv1, model.conv2))
            if convs != _WHISPER_CONVS:
                raise DataError(self.folder, f"Whisper encoder convs {convs} differ from {_WHISPER_CONVS}")
            if self.preprocessor:
                self._extractor = transformers.AutoFeatureExtractor.from_pretrained(self.folder, **kwargs)
            else:
                self._extractor = transformers.WhisperFeatureExtractor(feature_size=int(self.config["num_mel_bins"]))
        else:
            model = transformers.AutoModel.from_pretrained(self.folder, **kwargs)
            if self.preprocessor:
                self._extractor = transformers.AutoFeatureExtractor.from_pretrained(self.folder, **kwargs)
            else:
                self._extractor = transformers.Wav2Vec2FeatureExtractor(do_normalize=self.do_normalize)
        rate = getattr(self._extractor, "sampling_rate", SAMPLE_RATE)
        if rate != SAMPLE_RATE:
            raise DataError(self.folder, f"the feature extractor expects {rate} Hz audio; emofuse reads 16 kHz")
        self._model = model.to(self.device).eval()
        return self._model

    # Encoding --------------------------------------------------------------------------
    def encode(self, y: np.ndarray) -> np.ndarray:
        """(N,) 16 kHz float audio -> (T, D) or, with layers=all, (T, N_layers + 1, D) float32."""
        return self.encode_many([y])[0]

    def encode_many(self, signals: list[np.ndarray]) -> list[np.ndarray]:
        """One (T, D) / (T, L + 1, D) array per signal; chunks of all signals batched by length."""
        self._load()
        pieces = []  # (signal index, first global frame, owned frames [lo, hi) local, samples)
        totals = []
        for i, y in enumerate(signals):
            y = np.asarray(y, dtype=np.float32).reshape(-1)
            if self.do_normalize:  # over the whole utterance, before cutting (module docstring)
                y = self._extractor([y], sampling_rate=SAMPLE_RATE, return_tensors="np").input_values[0].astype(np.float32)
            if not self.whisper and len(y) < self.geometry.width:
                y = np.pad(y, (0, self.geometry.width - len(y)))
            total = self.num_frames(len(y))
            totals.append(total)
            for first, lo, hi, a, b in self._chunks(total, len(y)):
                pieces.append((i, first, lo, hi, y[a:b]))
        shape_tail = (self.num_hidden_states, self.hidden_size) if self.spec.layers == "all" else (self.hidden_size,)
        out = [np.zeros((t, *shape_tail), dtype=np.float32) for t in totals]
        order = sorted(range(len(pieces)), key=lambda k: len(pieces[k][4]))
        batch: list[int] = []
        for k in order + [None]:
            if batch and (k is None or len(batch) == self.batch_size
                          or (not self.pad_batches and len(pieces[k][4]) != len(pieces[batch[0]][4]))):
                for j, values in zip(batch, self._forward([pieces[j][4] for j in batch])):
                    i, first, lo, hi, _ = pieces[j]
                    out[i][first + lo:first + hi] = values[lo:hi]
                batch = []
            if k is not None:
                batch.append(k)
        return out

    def _chunks(self, total: int, num_samples: int):
        """(first global frame, owned local [lo, hi), sample range [a, b)) per chunk."""
        hop, extra = self.geometry.hop, max(0, self.geometry.width - self.geometry.hop)
        if self.whisper:
            extra = 0  # frame t is centred on t * hop; the window's own padding covers the edges
        return [(first, lo, hi, first * hop, min(num_samples, (first + self.chunk_frames) * hop + extra))
                for first, lo, hi in chunk_plan(total, self.chunk_frames, self.overlap_frames)]

    def _forward(self, chunks: list[np.ndarray]) -> list[np.ndarray]:
        """Hidden states of a batch of chunks: one (T_chunk, ...) float32 array each."""
        import torch

        model = self._model
        lengths = [len(c) for c in chunks]
        frames = [self.num_frames(n) for n in lengths]
        with torch.inference_mode():
            if self.whisper:
                window = self.window_frames * self.geometry.hop
                feats = self._extractor(chunks, sampling_rate=SAMPLE_RATE, return_tensors="pt", padding="max_length",
                                        max_length=window).input_features
                hidden = model(feats.to(self.device), output_hidden_states=True).hidden_states
            else:
                longest = max(lengths)
                values = torch.zeros(len(chunks), longest)
                mask = torch.zeros(len(chunks), longest, dtype=torch.long)
                for row, c in enumerate(chunks):
                    values[row, : len(c)] = torch.from_numpy(c)
                    mask[row, : len(c)] = 1
                kwargs = {"attention_mask": mask.to(self.device)} if self.pad_batches and min(lengths) < longest else {}
                hidden = model(values.to(self.device), output_hidden_states=True, **kwargs).hidden_states
            selected = _select(hidden, self.spec).float().cpu().numpy()  # (B, T, D) or (B, T, L + 1, D)
        return [selected[row, :n] for row, n in enumerate(frames)]


def _read_preprocessor(folder: Path) -> dict:
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise DataError(path, f"unreadable: {exc}") from None


class HFFrameFeature(FrameFeature):
    """A FrameFeature that knows its encoder's frame times (hop, receptive field) and, with
    layers=all, its layer axis: values (T, L * D) are (T, L, D) in row-major order."""

    def __init__(self, spec: str, encoder: HFSpeechEncoder):
        def compute(y: np.ndarray) -> np.ndarray:
            values = encoder.encode(y)
            return values.reshape(len(values), -1)  # layers=all: (T, (L + 1) * D)

        super().__init__(spec, encoder.dim, encoder.hop, encoder.settings, compute, prepare=encoder.warm)
        self.encoder = encoder
        self.layer_axis = encoder.num_hidden_states if encoder.spec.layers == "all" else None

    def num_frames(self, num_samples: int) -> int:
        return self.encoder.num_frames(num_samples)

    def extract_many(self, signals: list[np.ndarray], sr: int = SAMPLE_RATE) -> list[np.ndarray]:
        """`extract` of many utterances in batches by length (`HFSpeechEncoder.encode_many`):
        the same values as one at a time to float rounding (1e-5, tested)."""
        encoded = self.encoder.encode_many([resample(y, sr, SAMPLE_RATE) for y in signals])
        return [np.nan_to_num(v.reshape(len(v), -1)) for v in encoded]  # layers=all: (T, (L + 1) * D)

    def frame_times(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        return self.encoder.frame_times(n)

    @property
    def centre_offset(self) -> float:
        """Seconds from the hop grid's frame centre to the real one, where frames meet word times."""
        return self.encoder.geometry.centre_offset


def speech_frame_feature(spec: str, device: str | None = "cpu", **options) -> HFFrameFeature:
    """The `features.frame_feature.FrameFeature` of an hf: speech encoder (values flattened to 2-D)."""
    return HFFrameFeature(spec, HFSpeechEncoder(spec, device=device, **options))


# ------------------------------------------------------------------------------ word vectors


class HFWordEncoder:
    """Contextual word vectors from a local BERT/RoBERTa/DeBERTa/ELECTRA folder (module
    docstring); the same `encode(sentences) -> [(vectors (W, D), oov)]` as `words.MiniLMWords`."""

    def __init__(self, spec: str | HFSpec, device: str | None = "cpu", batch_size: int = 32,
                 max_pieces: int | None = None):
        self.spec = parse_spec(spec) if isinstance(spec, str) else spec
        self.name = self.spec.spec
        self.folder = resolve_folder(self.spec.path)
        self.config = read_config(self.folder)
        self.model_type = self.config["model_type"]
        if self.model_type in SPEECH_TYPES:
            raise ConfigError(f"{self.spec.spec!r}: model_type {self.model_type!r} is a speech encoder, not a text one")
        self.num_layers = _layer_count(self.config)
        _check_layer(self.spec, self.num_layers)
        self.hidden_size = _hidden_size(self.config)
        self.dim = self.hidden_size * (self.num_layers + 1 if self.spec.layers == "all" else 1)
        positions = _max_pieces(self.config)
        self.max_pieces = min(max_pieces or positions, positions)
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self._tokenizer = None
        self._model = None

    @property
    def settings(self) -> dict:
        return text_settings(self.spec, self.folder, self.config, self.max_pieces)

    def warm(self) -> "HFWordEncoder":
        self._load()
        return self

    def _load(self):
        if self._model is None:
            require_safetensors(self.folder)
            transformers = _transformers()
            kwargs: dict = {"local_files_only": True}
            if self.model_type in _PREFIX_SPACE_TYPES:
                kwargs["add_prefix_space"] = True
            self._tokenizer = transformers.AutoTokenizer.from_pretrained(self.folder, **kwargs)
            if not self._tokenizer.is_fast:
                raise DataError(self.folder, "the tokenizer has no fast (Rust) version; word_ids() needs one")
            model = transformers.AutoModel.from_pretrained(self.folder, local_files_only=True)
            self._model = model.to(self.device).eval()
        return self._tokenizer, self._model

    def encode(self, sentences: list[list[str]]) -> list[tuple[np.ndarray, int]]:
        import torch

        tokenizer, model = self._load()
        tail = (self.num_layers + 1, self.hidden_size) if self.spec.layers == "all" else (self.hidden_size,)
        vectors = [np.zeros((len(s), *tail), dtype=np.float32) for s in sentences]
        seen = [np.zeros(len(s), dtype=bool) for s in sentences]
        pending = [(i, 0) for i, s in enumerate(sentences) if s]  # (sentence, first word) windows
        while pending:
            chunk, pending = pending[: self.batch_size], pending[self.batch_size:]
            encoded = tokenizer([sentences[i][first:] for i, first in chunk], is_split_into_words=True,
                                truncation=True, max_length=self.max_pieces, padding=True, return_tensors="pt")
            with torch.inference_mode():
                hidden = model(**{k: v.to(self.device) for k, v in encoded.items()}, output_hidden_states=True).hidden_states
                values = _select(hidden, self.spec).float().cpu().numpy()  # (B, L, D) or (B, L, N + 1, D)
            for row, (i, first) in enumerate(chunk):
                word_ids = np.array([-1 if w is None else w for w in encoded.word_ids(row)])  # (L,)
                present = np.unique(word_ids[word_ids >= 0])
                for w in present:
                    vectors[i][first + w] = values[row, word_ids == w].mean(0)
                    seen[i][first + w] = True
                last = first + (int(present.max()) if present.size else -1)
                if last < len(sentences[i]) - 1 and int(encoded["attention_mask"][row].sum()) >= self.max_pieces:
                    # Truncated: the last word may be cut; encode again from it (or past it).
                    pending.append((i, last if last > first else last + 1))
        out = []
        for v, s in zip(vectors, seen):
            out.append((v.reshape(len(v), self.dim), int((~s).sum())))  # layers=all: (W, (N + 1) * D)
        return out


def _max_pieces(config: dict) -> int:
    positions = int(config.get("max_position_embeddings", 512))
    if config["model_type"] in ("roberta", "xlm-roberta", "camembert"):
        positions -= 2  # RoBERTa's positions start after the padding index
    return positions


def text_settings(spec: str | HFSpec, folder: Path | None = None, config: dict | None = None,
                  max_pieces: int | None = None) -> dict:
    """Settings that identify an hf: text encoder's vectors, without importing transformers."""
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    folder = folder or resolve_folder(spec.path)
    config = config or read_config(folder)
    return {
        "name": "hf-" + config["model_type"], "encoder": "hf", "model_type": config["model_type"],
        "weights_sha256": weights_hash(folder), "layers": spec.layers if spec.layers != "one" else spec.layer,
        "pooling": "mean of word pieces", "window": max_pieces or _max_pieces(config), "long": "windows restart at the cut word",
    }



__all__ = [
    "FrameGeometry", "HFSpec", "HFSpeechEncoder", "HFWordEncoder", "is_hf", "is_speech_encoder", "is_text_encoder",
    "parse_spec", "resolve_device", "resolve_folder", "speech_frame_feature", "speech_geometry", "stacked_layers",
    "text_settings",
    "weights_hash",
]
