"""ONNX export of acoustic-only model directories (B-ACO-1, B-ACO-1+attn, the multi-view
students of Aguilar et al. 2019 Table 3), checked against PyTorch with onnxruntime.

The graph is what prediction needs: ONE utterance, all of its frames real (batch 1, full
mask). Its input is the raw frame feature matrix `features` (1, T, D) with T free; the
training fold's z-normalisation is inside the graph, so a caller only extracts the frame
feature named in model.json. Outputs: `probabilities` (1, C) and `logits` (1, C), plus
`frame_attention` (1, T) for models with attention over frames.

Packed sequences (how `models.layers.BLSTM` keeps padding out of its states) do not export.
With one unpadded utterance the packed LSTM equals the plain LSTM over the whole sequence,
so the export runs on a copy of the model whose BLSTM blocks call the LSTM directly; the
check below compares that graph with the original PyTorch model (packed path) to 1e-4.
Models that read words or word times are refused with the reason: their word-level gathers
and silence compaction depend on the data (`layers.compact`) and do not trace into a graph.
"""

from __future__ import annotations

import copy
import types
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from emofuse.errors import ConfigError, EmofuseError
from emofuse.features.batch import Batch
from emofuse.features.normalise import Normalisation
from emofuse.models.modeldir import LoadedModel, load_model_dir
from emofuse.models.layers import BLSTM
from emofuse.io import atomic_path

TOLERANCE = 1e-4
OPSET = 17


def _full_length_blstm(self: BLSTM, x: Tensor, mask: Tensor) -> Tensor:
    """BLSTM.forward for one utterance whose frames are all real: no packing needed."""
    out, _ = self.lstm(x)  # (1, T, 2H)
    return out * mask.unsqueeze(-1).to(out.dtype)


def unpacked_copy(model: nn.Module) -> nn.Module:
    """A deep copy whose BLSTM blocks run without packed sequences (batch 1, full mask only)."""
    clone = copy.deepcopy(model).eval()
    for module in clone.modules():
        if isinstance(module, BLSTM):
            module.forward = types.MethodType(_full_length_blstm, module)
    return clone


class AcousticGraph(nn.Module):
    """features (1, T, D) raw -> z-normalised -> model -> probabilities, logits (+ frame attention)."""

    def __init__(self, model: nn.Module, mean: np.ndarray | None, std: np.ndarray | None, hop: float,
                 frame_attention: bool):
        super().__init__()
        self.model = model
        dim = None if mean is None else len(mean)
        self.register_buffer("mean", torch.as_tensor(mean if mean is not None else np.zeros(1), dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std if std is not None else np.ones(1), dtype=torch.float32))
        self.dim = dim
        self.hop = hop
        self.frame_attention = frame_attention

    def forward(self, features: Tensor):
        x = (features - self.mean) / self.std  # (1, T, D)
        mask = torch.ones_like(x[..., 0], dtype=torch.bool)  # (1, T): every frame is real
        batch = Batch(ids=["input"], labels=torch.zeros(1, dtype=torch.long), acoustic=x, acoustic_mask=mask,
                      acoustic_hop=self.hop)
        out = self.model(batch)
        probabilities = torch.softmax(out.logits, dim=-1)  # (1, C)
        if self.frame_attention:
            return probabilities, out.logits, out.explain["frame_attention"]
        return probabilities, out.logits


def _check_exportable(loaded: LoadedModel) -> None:
    info = loaded.info
    if list(info.needs) != ["acoustic"]:
        raise ConfigError(
            f"model {info.name!r} reads {', '.join(info.needs)}: only acoustic-only models export to ONNX "
            "(B-ACO-1, B-ACO-1+attn, multi-view students); word-level models gather by data-dependent "
            "word spans that do not trace into a static graph"
        )
    if info.settings.get("speech_only"):
        raise ConfigError(f"model {info.name!r} drops silence frames (speech_only), a data-dependent step "
                          "that does not export to ONNX")
    if info.trim is not None:
        raise ConfigError(f"model {info.name!r} was trained on the speech span only (data.trim={info.trim}): "
                          "finding that span (voice activity) is a data-dependent step outside the graph, so "
                          "the graph's caller could not feed what the model was trained on")
    if info.backend is not None:
        raise ConfigError(f"model {info.name!r} answers through a refitted output layer (protocol.backend="
                          f"{info.backend.get('kind')}) that is not part of the network: the graph would give "
                          "the network's own classifier, not the predictions its metrics describe")
    normalisation = Normalisation.from_dict(info.normaliser, loaded.path / "model.json")
    if not normalisation.fixed:
        raise ConfigError(f"model {info.name!r} was trained with data.normalise={normalisation.mode}: the ONNX graph holds "
                          "fixed normalisation statistics, so only models normalised with the training "
                          "part's statistics (data.normalise: fold) export")


def _statistics(record: dict | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(mean, std) (D,) of a fold normalisation, to hold inside the graph; (None, None) for none."""
    statistics = Normalisation.from_dict(record).statistics
    return (None, None) if statistics is None else (statistics.mean, statistics.std)


def _torch_reference(model: nn.Module, features: np.ndarray, mean, std, hop: float) -> dict[str, np.ndarray]:
    """The original PyTorch model (packed BLSTM path) on one utterance, as prediction runs it."""
    x = features if mean is None else (features - mean) / std
    x = torch.as_tensor(x, dtype=torch.float32)  # (1, T, D)
    mask = torch.ones(x.shape[:2], dtype=torch.bool)
    with torch.inference_mode():
        out = model(Batch(ids=["x"], labels=torch.zeros(1, dtype=torch.long), acoustic=x, acoustic_mask=mask,
                          acoustic_hop=hop))
    result = {"probabilities": torch.softmax(out.logits, -1).numpy(), "logits": out.logits.numpy()}
    if "frame_attention" in out.explain:
        result["frame_attention"] = out.explain["frame_attention"].numpy()
    return result


def check_onnx(onnx_path: str | Path, loaded: LoadedModel, lengths=(57, 213), seed: int = 0) -> dict:
    """Run the ONNX graph with onnxruntime and the PyTorch model on random utterances of
    several lengths; returns the largest absolute difference per output. Raises when > 1e-4."""
    import onnxruntime as ort

    info = loaded.info
    mean, std = _statistics(info.normaliser)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    rng = np.random.default_rng(seed)
    dim = int(info.spec["acoustic_dim"])
    worst: dict[str, float] = {}
    for t in lengths:
        raw = rng.standard_normal((1, t, dim)).astype(np.float32)
        if mean is not None:
            raw = raw * std + mean  # frames on the scale of the real feature
        got = dict(zip(names, session.run(None, {"features": raw})))
        want = _torch_reference(loaded.model, raw, mean, std, info.hop)
        for key, value in want.items():
            diff = float(np.max(np.abs(got[key] - value)))
            worst[key] = max(worst.get(key, 0.0), diff)
    bad = {k: v for k, v in worst.items() if v > TOLERANCE}
    if bad:
        raise EmofuseError(f"{onnx_path}: ONNX output differs from PyTorch by {bad} (> {TOLERANCE})")
    return {"max_abs_diff": worst, "lengths": list(lengths), "tolerance": TOLERANCE}


def export_onnx(model_dir: str | Path, out_path: str | Path, check: bool = True) -> dict:
    """Write MODEL_DIR's network as ONNX at `out_path` (atomically) and check it (module docstring)."""
    loaded = load_model_dir(model_dir)
    _check_exportable(loaded)
    info = loaded.info
    mean, std = _statistics(info.normaliser)
    dim = int(info.spec["acoustic_dim"])
    probe = torch.zeros(1, 8, dim)
    with torch.inference_mode():
        explain = loaded.model(Batch(ids=["x"], labels=torch.zeros(1, dtype=torch.long), acoustic=probe,
                                     acoustic_mask=torch.ones(1, 8, dtype=torch.bool), acoustic_hop=info.hop)).explain
    frame_attention = "frame_attention" in explain
    graph = AcousticGraph(unpacked_copy(loaded.model), mean, std, info.hop, frame_attention).eval()
    outputs = ["probabilities", "logits"] + (["frame_attention"] if frame_attention else [])
    dynamic = {"features": {1: "frames"}}
    if frame_attention:
        dynamic["frame_attention"] = {1: "frames"}
    with atomic_path(out_path) as tmp:
        example = torch.randn(1, 50, dim) * (torch.as_tensor(std) if std is not None else 1.0) + (
            torch.as_tensor(mean) if mean is not None else 0.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer and LSTM-with-batch-first chatter
            torch.onnx.export(graph, (example,), str(tmp), input_names=["features"], output_names=outputs,
                              dynamic_axes=dynamic, opset_version=OPSET, dynamo=False)
        report = check_onnx(str(tmp), loaded) if check else {}
    return {"path": str(out_path), "model": info.name, "inputs": {"features": ["1", "frames", dim]},
            "outputs": outputs, "normalised_inside": mean is not None, "feature": info.acoustic, **report}
