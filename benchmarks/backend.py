"""Benchmark: `protocol.backend` on networks already trained by benchmarks.aguilar or benchmarks.fgcme.

The back-end (`emofuse.training.refit_output`) only replaces the output layer of a fold's trained
network, and training is deterministic for a given config, so the networks of a finished run
with the same settings are the networks a from-scratch run with the back-end would train.
This copies each fold's trained network (`trained.json`, its best checkpoint, `normaliser.json`,
`split.json`; never `metrics.json` or `predictions.csv`) from FROM/<row> into OUT/<row>, then
runs the benchmark with `--set protocol.backend=KIND`: the engine finds the training done,
fits the back-end (C on the validation actors) and tests once. It refuses when the source run
was trained with other settings than the ones given here.

    python -m benchmarks.backend --bench aguilar --from runs/bench-aguilar-r --out runs/bench-backend \\
        --kind speaker-lr --rows H-MM-4,B-ACO-1,teacher-student --set model.hidden=64 ...

Results: OUT/<row>/ (run directories), and PREFIX.md / PREFIX.json (`--results`): per row the
network's own test UA, the back-end's, C per fold, and seconds per fold (training, from the
source run, and back-end).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np

from benchmarks import aguilar, fgcme
from emofuse.io import atomic_write_text
from emofuse.training.config import config_differences, flatten, load_config
from emofuse.training.metrics import mean_std
from emofuse.training.report import read_json, write_json

SETTINGS_IGNORED = {"run_dir", "protocol.backend", "trainer.progress"}


def copy_networks(source: Path, target: Path, config: dict, folds: set[int] | None = None) -> None:
    """The trained networks of the folds of `source` (all, or `folds`), if it ran with `config`."""
    trained = load_config(source / "config.yaml", []).to_dict()
    differ = [k for k in config_differences(trained, config)
              if k not in SETTINGS_IGNORED and not k.startswith("model.teacher_checkpoint")]
    if differ:
        was, asked = flatten(trained), flatten(config)
        raise SystemExit(f"{source}: trained with other settings ({', '.join(f'{k}={was.get(k)!r}' for k in differ)}; "
                         f"asked {', '.join(f'{k}={asked.get(k)!r}' for k in differ)})")
    for fold_dir in sorted(source.glob("fold-*")):
        if folds is not None and int(fold_dir.name.split("-")[1]) not in folds:
            continue
        marker = fold_dir / "trained.json"
        if not marker.is_file():
            raise SystemExit(f"{fold_dir}: training has not finished (no trained.json)")
        dest = target / fold_dir.name
        if (dest / "trained.json").is_file():
            continue
        best = read_json(marker)["best_checkpoint"]
        (dest / Path(best).parent).mkdir(parents=True, exist_ok=True)
        for name in (best, "normaliser.json", "split.json"):
            shutil.copy2(fold_dir / name, dest / name)
        shutil.copy2(marker, dest / "trained.json")  # last: its presence marks the copy done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bench", choices=("aguilar", "fgcme"), required=True)
    parser.add_argument("--from", dest="source", required=True, help="the --out folder of the finished benchmark run")
    parser.add_argument("--out", required=True)
    parser.add_argument("--kind", choices=("lr", "speaker-lr"), default="speaker-lr")
    parser.add_argument("--rows", required=True, help="comma-separated rows of that benchmark")
    parser.add_argument("--config-dir", default="configs/ravdess4")
    parser.add_argument("--set", action="append", default=[], help="the overrides the source run used (repeatable)")
    parser.add_argument("--folds", default=None, help="comma-separated fold indices (default: all)")
    parser.add_argument("--results", default="", help="write PREFIX.md and PREFIX.json")
    args = parser.parse_args(argv)
    folds = None if args.folds is None else {int(x) for x in args.folds.split(",")}
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    source, out = Path(args.source), Path(args.out)
    sets = [*args.set, f"protocol.backend={args.kind}"]
    for row in rows:
        stem = row.lower()
        config = load_config(Path(args.config_dir) / f"{stem}.yaml", sets).to_dict()
        copy_networks(source / stem, out / stem, config, folds)
    bench_args = ["--rows", ",".join(rows), "--out", str(out), "--config-dir", args.config_dir,
                  *[a for s in sets for a in ("--set", s)], *(["--folds", args.folds] if args.folds else [])]
    if args.bench == "aguilar":
        aguilar.main([*bench_args, "--results", ""])
    else:
        fgcme.main(bench_args)

    table = ["| row | network UA | back-end UA | back-end WA | per fold UA | C per fold | training s / fold | back-end s / fold |",
             "|---|---:|---:|---:|---|---|---:|---:|"]
    summary = []
    for row in rows:
        stem = row.lower()
        folds = [read_json(f / "metrics.json") for f in sorted((out / stem).glob("fold-*"))]
        trained = [read_json(f / "metrics.json")["seconds"] for f in sorted((source / stem).glob("fold-*"))
                   if (f / "metrics.json").is_file()]
        record = {
            "row": row, "kind": args.kind,
            "network_ua": [f["network_test"]["ua"] for f in folds], "ua": [f["test"]["ua"] for f in folds],
            "wa": [f["test"]["wa"] for f in folds], "C": [f["backend"]["C"] for f in folds],
            "backend_val_ua": [f["backend"]["val_ua"] for f in folds],
            "training_seconds": trained, "backend_seconds": [f["seconds"] for f in folds],
        }
        summary.append(record)
        table.append(f"| {row} | {mean_std(record['network_ua'], percent=False)} | **{mean_std(record['ua'], percent=False)}** | "
                     f"{mean_std(record['wa'], percent=False)} | {', '.join(f'{u:.3f}' for u in record['ua'])} | "
                     f"{', '.join(str(c) for c in record['C'])} | "
                     f"{np.mean(trained):.0f} | {np.mean(record['backend_seconds']):.0f} |")
    text = "\n".join([
        f"# Back-end `{args.kind}` on {args.bench} networks ({Path(args.config_dir).name})", "",
        f"Networks trained by `python -m benchmarks.{args.bench}` in `{source}` with: {' '.join(args.set) or '(configs as written)'}.",
        "Their output layer replaced by a class-balanced logistic regression on the utterance vector"
        + (", z-scored per speaker with all of the speaker's utterances (no labels)" if args.kind == "speaker-lr" else
           ", z-scored with the training part's statistics")
        + "; C chosen on the validation actors. Test UA/WA mean ± sample std over folds.", "",
        *table, ""])
    print(text)
    if args.results:
        atomic_write_text(Path(args.results + ".md"), text)
        write_json(Path(args.results + ".json"), {"overrides": args.set, "kind": args.kind, "source": str(source),
                                                  "std": "sample (ddof=1)", "rows": summary})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
