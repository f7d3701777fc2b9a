"""Benchmark: FG_CME (Li et al. 2021, fine-grained cross-modal excitation), every row of its Table 1, on RAVDESS 4-class,
5-fold actor-exclusive CV, plus the full model's training throughput.

Rows (configs under `configs/ravdess4/`), in the order of Table 1: cnn-lstm,
lstm-attn-acoustic, lstm-attn-semantic, uttconcat, attnfusion, mha, fgcme-no-acoustic-excite,
fgcme-no-semantic-excite, fgcme-no-excite, fgcme-ctc-align, fgcme. Each runs through the one
fold loop (`emofuse.training.run.run_folds`: fold-local normalisation, best epoch on
validation actors carved from the training part, one test pass per fold). The table gives
test WA and UA (mean ± sample std over the folds run), the paper's numbers (which picked the
best epoch on the test fold), seconds per fold and best epochs. From the best checkpoint of
every fold it also measures on the test part:
  - mean excitation gates over real words (FG_CME rows): "acoustic gate" E^a, "semantic gate" E^s;
  - for fgcme-ctc-align: the IoU of the CTC aligner's word spans with the forced alignment's.

    python -m benchmarks.fgcme --throughput                 # utterances / s, forward + backward, batch 32
    python -m benchmarks.fgcme --rows fgcme                 # the full model, 5 folds
    python -m benchmarks.fgcme                              # every row (hours on 2 CPU cores)

Results: OUT/<row>/ (the usual run directories with report.md), OUT/fgcme.md, OUT/fgcme.json.
A fold whose metrics.json exists is read, not retrained (`emofuse train CONFIG
run_dir=OUT/<row>` runs write the same layout).

Measured figures and their history: benchmarks/RESULTS.md.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.harness import DataCache, fold_values, report_text, row_arguments, row_table, run_rows
from emofuse.training.config import load_config
from emofuse.training.data import Collator
from emofuse.training.fold import eval_loader, fold_inputs, load_fold_model
from emofuse.training.run import protocol_folds, quiet_lightning
from emofuse.training.metrics import mean_std
from emofuse.training.module import EmotionModule
from emofuse.training.report import write_json

ROWS = ["cnn-lstm", "lstm-attn-acoustic", "lstm-attn-semantic", "uttconcat", "attnfusion", "mha",
        "fgcme-no-acoustic-excite", "fgcme-no-semantic-excite", "fgcme-no-excite", "fgcme-ctc-align", "fgcme"]
# Table 1, RAVDESS columns (WA, UA); best epoch chosen on the test fold in the paper's code.
PAPER = {
    "cnn-lstm": (0.640, 0.611), "lstm-attn-acoustic": (0.665, 0.627), "lstm-attn-semantic": None,
    "uttconcat": (0.629, 0.615), "attnfusion": (0.634, 0.593), "mha": (0.615, 0.572),
    "fgcme-no-acoustic-excite": (0.703, 0.683), "fgcme-no-semantic-excite": (0.720, 0.696),
    "fgcme-no-excite": (0.718, 0.700), "fgcme-ctc-align": (0.582, 0.566), "fgcme": (0.720, 0.708),
}


def span_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of [start, end) spans, (...) from (..., 2)."""
    overlap = (torch.minimum(a[..., 1], b[..., 1]) - torch.maximum(a[..., 0], b[..., 0])).clamp(min=0)
    union = (torch.maximum(a[..., 1], b[..., 1]) - torch.minimum(a[..., 0], b[..., 0])).clamp(min=1)
    return overlap.float() / union.float()


def explain_stats(cfg, data, fold, fold_dir: Path, result: dict) -> dict:
    """Mean gates over the test part's real words; CTC-vs-forced span IoU for the CTC row."""
    if not cfg.model_name.startswith("fgcme"):
        return {}
    model, collator = load_fold_model(cfg, data, fold, fold_dir)
    gates: dict[str, list] = {"acoustic_gate": [], "semantic_gate": []}
    ious = []
    with torch.no_grad():
        for batch in eval_loader(cfg, collator, fold.test):
            out = model(batch)
            for key in gates:
                if key in out.explain:
                    gates[key].append(out.explain[key][batch.word_mask])
            if model.aligner is not None and batch.word_frames is not None:
                predicted = model.aligner.word_frames(batch.acoustic, batch.acoustic_mask, batch.token_ids,
                                                      batch.word_mask)  # (B, W, 2) on the 10 ms grid
                ious.append(span_iou(predicted, batch.word_frames)[batch.word_mask])
    stats = {k: float(torch.cat(v).mean()) for k, v in gates.items() if v}
    if ious:
        stats["ctc_forced_iou"] = float(torch.cat(ious).mean())
    return stats


def table(rows: list[dict]) -> str:
    header = ["Row", "WA", "UA", "paper WA / UA", "s / fold", "best epochs", "acoustic gate", "semantic gate",
              "CTC-forced IoU", "folds"]

    def cells(r: dict) -> list[str]:
        paper = PAPER.get(r["row"])
        return [r["row"], *(mean_std(fold_values(r, k), percent=False) for k in ("wa", "ua")),
                f"{paper[0]:.3f} / {paper[1]:.3f}" if paper else "-",
                f"{np.mean(fold_values(r, 'seconds')):.0f}" if r["folds"] else "-",
                ", ".join(str(f.get("best_epoch", "-")) for f in r["folds"]),
                *(mean_std(fold_values(r, k), percent=False) for k in ("acoustic_gate", "semantic_gate", "ctc_forced_iou")),
                str(len(r["folds"]))]

    return row_table(header, rows, cells)


def throughput(args, log) -> dict:
    """Training throughput of the full model: utterances / s over real RAVDESS batches of 32
    (forward + backward + Adam step), after warm-up steps."""
    cfg = load_config(Path(args.config_dir) / "fgcme.yaml", list(args.set) + ["trainer.progress=false"])
    data = DataCache(log).get(cfg)
    fold = protocol_folds(cfg, data)[0]
    spec, normaliser, vocab = fold_inputs(cfg, data, fold.train)
    collator = Collator(data, normaliser, cfg.data.max_frames, cfg.data.max_words, vocab)
    torch.manual_seed(0)
    module = EmotionModule(cfg.model_name, cfg.model_settings, spec, cfg.to_dict()["optim"], list(data.classes))
    model = module.model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr)
    rng = np.random.default_rng(0)
    batches = [collator([int(i) for i in rng.choice(fold.train, 32, replace=False)])
               for _ in range(args.warmup + args.steps)]
    times = []
    for i, batch in enumerate(batches):
        started = time.perf_counter()
        loss = F.cross_entropy(model(batch).logits, batch.labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i >= args.warmup:
            times.append(time.perf_counter() - started)
    frames = float(np.mean([b.acoustic_mask.sum(1).float().mean().item() for b in batches]))
    result = {
        "model": cfg.model_name, "batch_size": 32, "steps": args.steps, "warmup": args.warmup,
        "threads": torch.get_num_threads(), "device": "cpu", "cpu": platform.processor() or platform.machine(),
        "mean_frames_per_utterance": round(frames, 1),
        "seconds_per_step_median": round(float(np.median(times)), 4),
        "utterances_per_second": round(32 / float(np.median(times)), 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "load_average_1min": round(os.getloadavg()[0], 2),  # other processes sharing the CPU
        "cpu_count": os.cpu_count(),
    }
    log(f"throughput: {result}")
    return result


TITLE = "FG_CME Table 1"
NOTES = ["test WA/UA mean ± sample std over the folds run; best epoch chosen on validation actors of the "
         "training part (the paper chose it on the test fold). Gates: mean over the test part's real words."]


def main(argv: list[str] | None = None) -> int:
    parser = row_arguments(__doc__.split("\n")[0], ROWS, "runs/bench-fgcme")
    parser.add_argument("--throughput", action="store_true", help="only measure the full model's training throughput")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.throughput:
        torch.set_num_threads(args.threads)
        quiet_lightning()
        write_json(out / "throughput.json", throughput(args, lambda line: print(line, file=sys.stderr, flush=True)))
        print((out / "throughput.json").read_text())
        return 0

    run_rows(args, "fgcme", explain_stats, lambda done: report_text(args, TITLE, NOTES, table(done)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
