"""Benchmark: the convolutional attention network (seed 003) and the NMT-style attention model
(seed 001) on RAVDESS 4-class, 5-fold actor-exclusive CV.

Rows (configs under `configs/ravdess4/`): `can`, `can-shallow` (its concatenation baseline),
`nmt-global`, `nmt-local`, `nmt-forced`. Each row runs through the real training engine
(`emofuse.training.loop.train_fold`: fold-local normalisation, model selection on validation
actors carved from the training part, one test pass per fold) and the table reports test UA
and WA (mean ± sample std over the folds run) and seconds per fold. From the best checkpoint
of every fold it also measures, over the test part's real words:
  - attention entropy relative to uniform over the real audio positions (1 = uniform);
  - "mass in own word" (NMT rows): the share of each word's attention that falls on the audio
    states of its own forced-aligned span, i.e. how far a free (global/local) alignment agrees
    with the forced one (1 by construction for nmt-forced).
RAVDESS words are the same two statements for every emotion: all the evidence is acoustic.

    python benchmarks/can_nmt.py                                   # all rows, all folds
    python benchmarks/can_nmt.py --folds 0 --set trainer.max_epochs=8 --out runs/bench-can-nmt

Results: OUT/<row>/ (the usual run directories with report.md: per-class precision, recall,
F1 and confusion matrix), OUT/can_nmt.md and OUT/can_nmt.json. A fold whose metrics.json
exists is read, not retrained.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch

from emofuse.features.batch import alignment_matrix
from emofuse.io import atomic_write_text
from emofuse.training.config import load_config, save_config
from emofuse.training.features import load_labelled
from emofuse.training.loop import eval_loader, load_fold_model, quiet_lightning, train_fold
from emofuse.training.report import read_json, run_summary, write_json, write_run_report
from emofuse.training.splits import make_folds

ROWS = ["can", "can-shallow", "nmt-global", "nmt-local", "nmt-forced"]


def data_key(cfg) -> tuple:
    d = cfg.data
    return (d.manifest, d.corpus, d.path, d.store, d.label_set, d.acoustic, d.words, d.align,
            d.max_frames, d.max_words)


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


def run_row(row: str, args, data_cache: dict, log) -> dict:
    path = Path(args.config_dir) / f"{row}.yaml"
    run_dir = Path(args.out) / row
    cfg = load_config(path, list(args.set) + [f"run_dir={run_dir}", "trainer.progress=false"])
    key = data_key(cfg)
    if key not in data_cache:
        data_cache[key] = load_labelled(cfg, log=log, progress=False)
    data = data_cache[key]
    p = cfg.protocol
    folds = make_folds(data.corpus, p.name, k=p.k, seed=cfg.seed, val_fraction=p.val_fraction,
                       val_speakers=p.val_speakers)
    save_config(cfg, run_dir)
    results = []
    for fold in folds:
        if args.folds is not None and fold.index not in args.folds:
            continue
        fold_dir = run_dir / f"fold-{fold.index}"
        if (fold_dir / "metrics.json").is_file():
            result = read_json(fold_dir / "metrics.json")
        else:
            started = time.time()
            result = train_fold(copy.deepcopy(cfg), data, fold, fold_dir, log=lambda s: None)
            log(f"{row} fold {fold.index}: test UA {result['test']['ua']:.3f} WA {result['test']['wa']:.3f} "
                f"(best epoch {result['best_epoch']}, {time.time() - started:.0f} s)")
        explain_path = fold_dir / "explain.json"
        if explain_path.is_file():
            result["explain"] = read_json(explain_path)
        else:
            result["explain"] = explain_stats(cfg, data, fold, fold_dir, result)
            write_json(explain_path, result["explain"])
        results.append(result)
    run = run_summary(cfg.to_dict(), data.classes, results, len(folds))
    write_run_report(run_dir, run, cfg.to_dict())
    return {"row": row, "model": cfg.model_name, "run_dir": str(run_dir), "settings": cfg.model_settings,
            "optim": cfg.to_dict()["optim"], "folds": results, "summary": run["summary"]}


def mean_std(values: list[float], percent: bool = True) -> str:
    if not values:
        return "-"
    v = np.asarray(values, dtype=np.float64) * (100.0 if percent else 1.0)
    std = v.std(ddof=1) if len(v) > 1 else float("nan")
    return f"{v.mean():.1f} ± {std:.1f}" if percent else f"{v.mean():.3f} ± {std:.3f}"


def table(rows: list[dict]) -> str:
    header = ["Row", "UA (%)", "WA (%)", "macro-F1 (%)", "s / fold", "best epoch", "attn. entropy",
              "mass in own word", "folds"]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for r in rows:
        folds = r["folds"]

        def stat(name):
            return [f["explain"][name] for f in folds if name in f.get("explain", {})]

        secs = [f["seconds"] for f in folds]
        lines.append("| " + " | ".join([
            r["row"],
            mean_std([f["test"]["ua"] for f in folds]), mean_std([f["test"]["wa"] for f in folds]),
            mean_std([f["test"]["macro_f1"] for f in folds]),
            f"{np.mean(secs):.0f}" if secs else "-",
            ", ".join(str(f.get("best_epoch", "-")) for f in folds),
            mean_std(stat("attention_entropy"), percent=False),
            mean_std(stat("mass_in_own_word"), percent=False),
            str(len(folds)),
        ]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-dir", default="configs/ravdess4")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, from {', '.join(ROWS)}")
    parser.add_argument("--set", action="append", default=[],
                        help="config override, e.g. trainer.max_epochs=8 (repeatable)")
    parser.add_argument("--folds", default=None, help="comma-separated fold indices (default: all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="runs/bench-can-nmt")
    args = parser.parse_args(argv)
    args.folds = None if args.folds is None else {int(x) for x in args.folds.split(",")}
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    torch.set_num_threads(args.threads)
    quiet_lightning()

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    data_cache: dict = {}
    done = []
    out = Path(args.out)
    for row in rows:
        done.append(run_row(row, args, data_cache, log))
        report = [
            f"# Convolutional attention network and NMT-style attention on {Path(args.config_dir).name}", "",
            f"Overrides: {' '.join(args.set) or '(none: the configs as written)'}; test UA/WA/macro-F1 mean ± "
            "sample std over the folds run; model selection on validation speakers of the training part.",
            "Attention entropy is relative to uniform over the positions each word may attend to (1 = uniform);",
            "mass in own word = share of a word's attention on the audio states of its forced-aligned span.", "",
            table(done), "",
            "Per-class precision, recall, F1 and confusion matrices: `<row>/report.md` of each run.", "",
        ]
        atomic_write_text(out / "can_nmt.md", "\n".join(report))
        write_json(out / "can_nmt.json", {"overrides": args.set, "rows": done})
    print((out / "can_nmt.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
