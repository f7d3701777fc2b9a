"""Benchmark: run the Aguilar et al. (2019) baselines through the engine, in full, and record
UA / WA / macro-F1 / weighted-F1 (mean ± sample std over folds) and the wall time.

    python -m benchmarks.train_baselines                      # both default runs below
    python -m benchmarks.train_baselines configs/meld/b-lex.yaml -- trainer.max_epochs=5

Defaults: configs/ravdess4/b-aco-1.yaml (5-fold actor-exclusive CV, target UA >= 0.65) and
configs/meld/b-lex.yaml (official split, target weighted-F1 >= 0.55 on test with MiniLM
vectors). Overrides after `--` apply to every config. Results are merged into
benchmarks/results/train_baselines.json (one entry per config + overrides), written
atomically; each run keeps its run directory, so an interrupted benchmark resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "train_baselines.json"
DEFAULTS = ["configs/ravdess4/b-aco-1.yaml", "configs/meld/b-lex.yaml"]
TARGETS = {"ravdess4/b-aco-1": ("ua", 0.65), "meld/b-lex": ("weighted_f1", 0.55),
           "ravdess4/h-mm-4": ("ua", 0.72), "ravdess4/fgcme": ("ua", 0.72)}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, overrides = argv[:cut], argv[cut + 1:]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="*", default=DEFAULTS)
    args = parser.parse_args(argv)

    import torch

    from emofuse.io import atomic_write_text
    from emofuse.training.config import load_config
    from emofuse.training.run import quiet_lightning, run_experiment
    from emofuse.training.metrics import HEADLINE, mean_std

    quiet_lightning()
    for config in args.configs:
        path = Path(config) if Path(config).is_absolute() else ROOT / config
        cfg = load_config(path, overrides)
        key = f"{cfg.corpus}/{cfg.name}" + (f" [{' '.join(overrides)}]" if overrides else "")
        print(f"== {key}: run dir {cfg.resolved_run_dir()}", flush=True)
        start = time.time()
        run = run_experiment(cfg, log=lambda line: print(line, flush=True), progress=False)
        wall = time.time() - start
        summary = {k: run["summary"][k] for k in HEADLINE}
        target = TARGETS.get(f"{cfg.corpus}/{cfg.name}")
        entry = {
            "config": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path),
            "overrides": overrides,
            "model": cfg.model_name,
            "protocol": cfg.protocol.name,
            "folds_done": run["folds_done"],
            "folds_total": run["folds_total"],
            "summary": summary,
            "std": "sample (ddof=1)",
            "per_fold": [{"fold": f["fold"], **{k: f["test"][k] for k in HEADLINE}, "best_epoch": f["best_epoch"],
                          "seconds": f.get("seconds")} for f in run["folds"]],
            "train_seconds_all_folds": run["seconds"],
            "wall_seconds_this_invocation": round(wall, 1),
            "run_dir": run["run_dir"],
            "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                        "python": platform.python_version(), "torch": torch.__version__},
        }
        if target:
            metric, threshold = target
            entry["target"] = {"metric": metric, "threshold": threshold,
                               "met": summary[metric]["mean"] >= threshold}
        # Re-read just before writing: another benchmark process may have added its entry meanwhile.
        results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
        results[key] = entry
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(RESULTS, json.dumps(results, indent=2) + "\n")
        line = "  ".join(f"{k} {mean_std(summary[k], percent=False)}" for k in HEADLINE)
        print(f"== {key}: {line}  ({run['folds_done']}/{run['folds_total']} folds, {wall:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
