"""Which weights file an hf: encoder folder may be loaded from: safetensors only.

A `pytorch_model.bin` (or any .bin/.pt/.pth/.ckpt) is a pickle, which runs code when it is
loaded; emofuse never loads one (transformers refuses it too, in some 78 lines). This check
says so in one line before transformers is reached. It lives apart from `features/hf.py` so
that the model-directory check (`models/modeldir.check_encoders`), the CLI and the encoders'
loaders (`HFSpeechEncoder._load`, `HFWordEncoder._load`, before `from_pretrained`) call it.
"""

from __future__ import annotations

from pathlib import Path

from emofuse.errors import DataError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
CONVERT = ("python -c \"import transformers as t; t.AutoModel.from_pretrained('{folder}', use_safetensors=False)"
           ".save_pretrained('{folder}')\" (only for a checkpoint you trust: loading it runs its pickle)")


def require_safetensors(folder: str | Path) -> None:
    """`folder` holds safetensors weights; a folder with only a pickle checkpoint is one
    DataError naming it and how to convert it. A folder with neither is left to the loader."""
    folder = Path(folder)
    if any(p.name.endswith((".safetensors", ".safetensors.index.json")) for p in folder.iterdir()):
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name.endswith(PICKLE_SUFFIXES)
                     and p.name != "training_args.bin")
    if pickles:
        raise DataError(folder, f"hf folder holds only a pickle checkpoint ({', '.join(pickles)}); emofuse loads "
                                f"safetensors only: convert it with {CONVERT.format(folder=folder)}")
