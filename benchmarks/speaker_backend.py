"""Benchmark (diagnostic): a speaker-normalised linear back-end on trained networks' representations.

Would speaker-normalising a network's utterance representation close the gap to the linear
reference on RAVDESS4?

`benchmarks/utterance_stats.py` reaches UA 0.73 with a logistic regression on utterance
statistics z-scored per speaker, while the networks (fed per-speaker z-scored frames) sit at
0.61-0.68. This takes finished 5-fold runs and, for every fold's best checkpoint:

  - reads the input of the network's final linear layer (its utterance representation) for
    every utterance of the corpus;
  - `lr`: a class-balanced logistic regression on those vectors (z-scored with the training
    part's statistics), C chosen on the validation actors;
  - `lr_speaker`: the same after z-scoring each speaker's vectors with that speaker's own
    statistics (unlabelled; test speakers too, like `data.normalise=speaker`).

Test UA of both next to the network's own. The training part's vectors come from a network
that was fitted on them, so the back-end sees them better separated than the validation and
test ones; C is still chosen on validation actors, never on the test fold.

    python benchmarks/speaker_backend.py --run H-MM-4=RUN_DIR --run fgcme=RUN_DIR

Results: printed and written to benchmarks/results/speaker_backend.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from utterance_stats import by_speaker  # noqa: E402  (benchmarks/ is the script's folder)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "speaker_backend.json"
CS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


def representations(model: torch.nn.Module, loader, n: int, classes: int, index: dict[str, int]) -> np.ndarray:
    """Input of the single final nn.Linear with `classes` outputs, per utterance (N, H)."""
    finals = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == classes]
    if len(finals) != 1:
        raise SystemExit(f"expected one final linear layer with {classes} outputs, found {len(finals)}")
    seen: dict[str, torch.Tensor] = {}
    hook = finals[0].register_forward_pre_hook(lambda module, args: seen.__setitem__("h", args[0].detach()))
    out = np.zeros((n, finals[0].in_features), dtype=np.float64)
    try:
        with torch.no_grad():
            for batch in loader:
                model(batch)
                for row, uid in enumerate(batch.ids):
                    out[index[uid]] = seen["h"][row].numpy()
    finally:
        hook.remove()
    return out


def backend_ua(x: np.ndarray, y: np.ndarray, fold) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score

    tr, va, te = (np.asarray(i) for i in (fold.train, fold.val, fold.test))
    z = (x - x[tr].mean(0)) / (x[tr].std(0) + 1e-6)
    best = None
    for c in CS:
        clf = LogisticRegression(C=c, max_iter=3000, class_weight="balanced").fit(z[tr], y[tr])
        score = balanced_accuracy_score(y[va], clf.predict(z[va]))
        if best is None or score > best[0]:
            best = (score, clf)
    return float(balanced_accuracy_score(y[te], best[1].predict(z[te])))


def run(row: str, run_dir: Path) -> dict:
    from emofuse.training.config import load_config
    from emofuse.training.features import load_labelled
    from emofuse.training.loop import eval_loader, load_fold_model
    from emofuse.training.report import read_json
    from emofuse.training.splits import make_folds

    cfg = load_config(run_dir / "config.yaml", [])
    data = load_labelled(cfg, log=lambda m: None, progress=False)
    y = np.asarray(data.labels)
    speakers = np.array([u.speaker for u in data.corpus])
    index = {it.id: i for i, it in enumerate(data.items)}
    p = cfg.protocol
    folds = make_folds(data.corpus, p.name, k=p.k, seed=cfg.seed, val_fraction=p.val_fraction,
                       val_speakers=p.val_speakers)
    per_fold = []
    for fold in folds:
        fold_dir = run_dir / f"fold-{fold.index}"
        model, collator = load_fold_model(cfg, data, fold, fold_dir)
        x = representations(model, eval_loader(cfg, collator, range(len(data.items))), len(data.items),
                            len(data.classes), index)
        per_fold.append({"fold": fold.index, "network": read_json(fold_dir / "metrics.json")["test"]["ua"],
                         "lr": backend_ua(x, y, fold), "lr_speaker": backend_ua(by_speaker(x, speakers), y, fold)})
        print(f"{row} fold {fold.index}: " + ", ".join(f"{k} {v:.3f}" for k, v in per_fold[-1].items() if k != "fold"),
              file=sys.stderr, flush=True)
    summary = {k: {"mean": round(float(np.mean([f[k] for f in per_fold])), 4),
                   "std": round(float(np.std([f[k] for f in per_fold], ddof=1)), 4)}
               for k in ("network", "lr", "lr_speaker")}
    return {"row": row, "model": cfg.model_name, "run_dir": str(run_dir), "ua": summary,
            "folds": [{k: round(v, 4) if isinstance(v, float) else v for k, v in f.items()} for f in per_fold]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", action="append", required=True, metavar="ROW=RUN_DIR",
                        help="a finished run directory (every fold done), repeatable")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = []
    for spec in args.run:
        row, _, path = spec.partition("=")
        if not path:
            parser.error(f"--run {spec!r}: expected ROW=RUN_DIR")
        results.append(run(row, Path(path)))
    print("| row | network UA | LR back-end | LR back-end, speaker-z |\n|---|---:|---:|---:|")
    for r in results:
        u = r["ua"]
        print(f"| {r['row']} | " + " | ".join(f"{u[k]['mean']:.3f} ± {u[k]['std']:.3f}"
                                               for k in ("network", "lr", "lr_speaker")) + " |")
    from emofuse.training.config import atomic_write_text

    atomic_write_text(RESULTS, json.dumps({"what": __doc__.split("\n")[0].strip(), "std": "sample (ddof=1)",
                                           "runs": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
