"""Reading Lightning checkpoints without running code from them.

A `.ckpt` file is a pickle, and unpickling calls whatever the file names: a crafted
`last.ckpt` in a run directory would run its payload on resume or export. Every checkpoint
is therefore read with `torch.load(weights_only=True)`, which builds tensors and plain values
(dict, list, str, numbers, OrderedDict) and refuses any other callable or class.

`SAFE_TYPES` lists what Lightning's checkpoints need beyond torch's own allowlist. Measured
with Lightning 2.6 and torch 2.13 on real checkpoints of `emofuse train` (best and last, with
`trainer.ema`, early stopping, `trainer.progress` and model checkpoints; and every `.ckpt`
this project's tests and demo leave behind): nothing. `tests/test_checkpoints_safe.py` saves
such checkpoints and asserts that they still ask for nothing else, so a Lightning upgrade that
adds a type is caught there and its type registered here, after reading what it does.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor, nn

from emofuse.errors import DataError
from emofuse.models.modeldir import state_mismatch

# Types a Lightning checkpoint may hold besides tensors and plain values (see above).
SAFE_TYPES: tuple[type, ...] = ()

_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_UNPICKLER_ERROR = re.compile(r"WeightsUnpickler error:\s*(\S[^\n]*)")


def read_checkpoint(path: str | Path) -> dict:
    """A Lightning checkpoint as a dict, tensors on the CPU; DataError naming the file for a
    missing, truncated or foreign file, and for one asking to build anything but tensors and
    plain values (which is never run)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "checkpoint not found")
    try:
        with torch.serialization.safe_globals(list(SAFE_TYPES)):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - whatever an untrusted file makes the reader raise
        refused = _REFUSED_GLOBAL.search(str(exc))
        if refused:
            raise DataError(path, f"refused: the file asks to build {refused.group(1)}, which no checkpoint "
                                  "needs (only tensors and plain values are read; it was not run)") from None
        detail = _first_line(exc)
        raise DataError(path, "not a readable checkpoint: truncated, damaged, or not a torch file "
                              f"({type(exc).__name__}{': ' + detail if detail else ''})") from None
    if not isinstance(checkpoint, dict):
        raise DataError(path, f"not a Lightning checkpoint (holds a {type(checkpoint).__name__}, not a dict)")
    return checkpoint


def checkpoint_state(path: str | Path) -> dict[str, Tensor]:
    """The state dict of a checkpoint (its "state_dict" entry, or the file itself when it is a
    bare state dict), checked to hold tensors only."""
    return state_of(read_checkpoint(path), path)


def state_of(checkpoint: dict, path: str | Path) -> dict[str, Tensor]:
    """`checkpoint_state` of a checkpoint already read from `path`."""
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise DataError(path, "not a checkpoint with a state dict of tensors")
    return state


def load_weights(network: nn.Module, state: dict[str, Tensor], path: str | Path, what: str) -> None:
    """`network.load_state_dict(state)` (strict), or one DataError naming the checkpoint `path`
    when its tensors do not fit `what` (the network built from the config): which names are
    missing or extra, and the first tensor of another shape, instead of torch's page of them."""
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = state_mismatch(network.state_dict(), state) or " ".join(str(exc).split())[:200]
        raise DataError(path, f"does not fit {what} built from the config: {detail}; was it trained with other "
                              "model settings or features?") from None


def _first_line(exc: Exception) -> str:
    # torch's refusal is a page of advice (including turning the safe loader off): keep its reason only
    reason = _UNPICKLER_ERROR.search(str(exc))
    lines = [reason.group(1)] if reason else str(exc).strip().splitlines()
    return lines[0][:160] if lines else ""
