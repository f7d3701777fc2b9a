"""Benchmark: the convolutional attention network (Lee et al. 2018) and the NMT-style attention model
(Cid Ornelas, slides "Multimodal Emotion Recognition using Lexico-Acoustic Language Descriptions")
on RAVDESS 4-class, 5-fold actor-exclusive CV.

Rows (configs under `configs/ravdess4/`): `can`, `can-shallow` (its concatenation baseline),
`nmt-global`, `nmt-local`, `nmt-forced`. Each row runs through the one fold loop
(`emofuse.training.run.run_folds`: fold-local normalisation, model selection on validation
actors carved from the training part, one test pass per fold) and the table reports test UA
and WA (mean ± sample std over the folds run) and seconds per fold. From the best checkpoint
of every fold it also measures, over the test part's real words:
  - attention entropy relative to uniform over the real audio positions (1 = uniform);
  - "mass in own word" (NMT rows): the share of each word's attention that falls on the audio
    states of its own forced-aligned span, i.e. how far a free (global/local) alignment agrees
    with the forced one (1 by construction for nmt-forced).
RAVDESS words are the same two statements for every emotion: all the evidence is acoustic.

    python -m benchmarks.can_nmt                                   # all rows, all folds
    python -m benchmarks.can_nmt --folds 0 --set trainer.max_epochs=8 --out runs/bench-can-nmt

Results: OUT/<row>/ (the usual run directories with report.md: per-class precision, recall,
F1 and confusion matrix), OUT/can_nmt.md and OUT/can_nmt.json. A fold whose metrics.json
exists is read, not retrained.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from benchmarks.harness import fold_values, report_text, row_arguments, row_table, run_rows
from emofuse.features.batch import alignment_matrix
from emofuse.training.fold import eval_loader, load_fold_model
from emofuse.training.metrics import mean_std

ROWS = ["can", "can-shallow", "nmt-global", "nmt-local", "nmt-forced"]


def explain_stats(cfg, data, fold, fold_dir: Path, result: dict) -> dict:
    """Attention entropy and (NMT) the attention mass inside each word's own span, on the test part."""
    model, collator = load_fold_model(cfg, data, fold, fold_dir)
    entropies, own = [], []
    with torch.no_grad():
        for batch in eval_loader(cfg, collator, fold.test):
            out = model(batch)
            a = out.explain.get("alignment")  # (B, W, T')
            if a is None:
                continue
            real = batch.word_mask[:, : a.shape[1]] & (a.sum(-1) > 0)  # words the model saw
            positions = (a > 0).sum(-1).clamp(min=2).float()  # allowed positions per word
            h = -(a.clamp(min=1e-12).log() * a).sum(-1) / positions.log()  # (B, W)
            entropies.append(h[real])
            if cfg.model_name.startswith("nmt") and batch.word_frames is not None:
                front = model.frontend
                samples = batch.word_frames * batch.acoustic.shape[-1]
                n_states = torch.full((a.shape[0],), a.shape[-1])
                spans = front.states_of_samples(samples, n_states)  # (B, W, 2)
                inside = alignment_matrix(spans, a.shape[-1], batch.word_mask)  # (B, W, T')
                own.append((a * inside).sum(-1)[real])
    stats: dict = {}
    if entropies:
        stats["attention_entropy"] = float(torch.cat(entropies).mean())
    if own:
        stats["mass_in_own_word"] = float(torch.cat(own).mean())
    return stats


def table(rows: list[dict]) -> str:
    header = ["Row", "UA (%)", "WA (%)", "macro-F1 (%)", "s / fold", "best epoch", "attn. entropy",
              "mass in own word", "folds"]
    return row_table(header, rows, lambda r: [
        r["row"], *(mean_std(fold_values(r, k)) for k in ("ua", "wa", "macro_f1")),
        f"{np.mean(fold_values(r, 'seconds')):.0f}" if r["folds"] else "-",
        ", ".join(str(f.get("best_epoch", "-")) for f in r["folds"]),
        *(mean_std(fold_values(r, k), percent=False) for k in ("attention_entropy", "mass_in_own_word")),
        str(len(r["folds"]))])


TITLE = "Convolutional attention network and NMT-style attention"
NOTES = ["test UA/WA/macro-F1 mean ± sample std over the folds run; model selection on validation speakers "
         "of the training part.",
         "Attention entropy is relative to uniform over the positions each word may attend to (1 = uniform);",
         "mass in own word = share of a word's attention on the audio states of its forced-aligned span."]


def main(argv: list[str] | None = None) -> int:
    args = row_arguments(__doc__.split("\n")[0], ROWS, "runs/bench-can-nmt").parse_args(argv)
    run_rows(args, "can_nmt", explain_stats, lambda done: report_text(args, TITLE, NOTES, table(done)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
