"""An hf: text encoder whose weights train with the model that reads it (`model.finetune_words`).

The same word-vector recipe as the store's frozen `hf:PATH` words (`features.hf.HFWordEncoder`):
pre-split words, a word's vector the mean of its word pieces' hidden states (the spec's layer,
or every hidden state stacked with ``#layers=all``), found through the tokenizer's `word_ids()`.
It starts from the folder's weights (offline, `local_files_only`); a checkpoint's state dict
then replaces them, so an exported model carries its fine-tuned encoder. One difference from
the store: a sentence longer than the model's positions is cut (the words past the cut get the
zero vector, as with `features.minilm.TrainableWordVectors`) rather than encoded in windows.

Kept apart from `features.hf` because it imports torch at import time, which the store's
workers for the built-in features must not pay for.
"""

from __future__ import annotations

import torch
from torch import nn

from emofuse.features.hf import HFWordEncoder, _select


class HFTrainableWordVectors(nn.Module):
    """Words -> (B, W, D) word vectors of a local BERT/RoBERTa/DeBERTa/ELECTRA, weights trainable."""

    def __init__(self, spec: str):
        super().__init__()
        frozen = HFWordEncoder(spec, device="cpu")  # the spec, folder and layer checks, and the loading
        tokenizer, model = frozen._load()
        self.spec = frozen.spec
        self.tokenizer = tokenizer
        self.encoder = model.train()
        self.dim = frozen.dim
        self.max_pieces = frozen.max_pieces

    def forward(self, sentences: list[list[str]], num_words: int) -> torch.Tensor:
        """`num_words` word slots per sentence (the batch's padded word count)."""
        device = next(self.encoder.parameters()).device
        encoded = self.tokenizer([list(s) if s else [""] for s in sentences], is_split_into_words=True,
                                 truncation=True, max_length=self.max_pieces, padding=True, return_tensors="pt")
        word = torch.tensor([[-1 if w is None else w for w in encoded.word_ids(row)] for row in range(len(sentences))],
                            dtype=torch.long, device=device)  # (B, L) word of each piece, -1: none
        hidden = self.encoder(**{k: v.to(device) for k, v in encoded.items()}, output_hidden_states=True).hidden_states
        values = _select(hidden, self.spec).flatten(2)  # (B, L, D) or, layers=all, (B, L, (N + 1) * D)
        slots = torch.arange(num_words, device=device)
        member = (word.unsqueeze(1) == slots[None, :, None]).to(values.dtype)  # (B, W, L)
        return member @ values / member.sum(-1, keepdim=True).clamp(min=1.0)  # (B, W, D)
