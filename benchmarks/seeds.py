"""Benchmark: variants of one row, each under several seeds, and the variant chosen on validation.

The 5-fold test UA of one RAVDESS4 config moves by up to 4.5 points with the seed (FG_CME:
0.689-0.734; the seed draws the folds, the validation actors, the initial weights and the
batch order).
A variant that beats another by less than that on one seed has not beaten it. This runs
every variant with every seed through a sibling benchmark (`fgcme.py` or `aguilar.py`, so
the run directories are theirs and a finished fold is read, not retrained), then:

- per variant: the mean over seeds of the validation UA (the back-end's when the runs use
  `protocol.backend`: the layer that predicts; else the network's best-epoch score), and of
  the test UA and WA (per seed: the mean over its folds);
- the variant with the best mean validation UA is the one chosen. Its test figures are
  reported as they are; the test part plays no role in the choice.

    python -m benchmarks.seeds --bench fgcme --row fgcme --seeds 0,1,2 --jobs 2 \\
        --variant base= --variant ema=trainer.ema=0.99 --variant dropout=model.dropout=0.4 \\
        --set data.normalise=speaker ... --out /tmp/seeds --results benchmarks/results/fgcme_seeds

A variant is NAME=OVERRIDE[,OVERRIDE...] (NAME= for none); `--set` overrides apply to all.
Run directories: OUT/NAME-sSEED/ROW. Results: PREFIX.md and PREFIX.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from emofuse.training.metrics import mean_std

HERE = Path(__file__).resolve().parent


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, rest = text.partition("=")
    if not name:
        raise SystemExit(f"--variant {text!r}: give NAME=OVERRIDE[,OVERRIDE...] (NAME= for none)")
    return name, [o for o in rest.split(",") if o]


def run_dir(out: Path, name: str, seed: int) -> Path:
    return out / f"{name}-s{seed}"


def run_one(args, name: str, overrides: list[str], seed: int) -> int:
    target = run_dir(Path(args.out), name, seed)
    sets = [*args.set, *overrides, f"seed={seed}"]
    rows = ",".join([*filter(None, args.before.split(",")), args.row])
    command = [sys.executable, str(HERE / f"{args.bench}.py"), "--rows", rows, "--out", str(target),
               "--threads", str(args.threads)]
    if args.bench == "aguilar":
        command += ["--results", ""]
    for item in sets:
        command += ["--set", item]
    target.mkdir(parents=True, exist_ok=True)
    with (target / "bench.log").open("a") as log:
        rc = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)
    status = "done" if rc == 0 else f"failed (rc {rc}, see {target / 'bench.log'})"
    print(f"{name} seed {seed}: {status}", flush=True)
    return rc


def fold_scores(metrics: dict) -> dict:
    folds = metrics["folds"]
    if folds and "backend" in folds[0]:
        val = [f["backend"]["val_ua"] for f in folds]
        network = [f["network_test"]["ua"] for f in folds]
    else:
        val = [f["val_score"] for f in folds]
        network = [f["test"]["ua"] for f in folds]
    return {"val_ua": val, "test_ua": [f["test"]["ua"] for f in folds], "test_wa": [f["test"]["wa"] for f in folds],
            "network_test_ua": network, "best_epochs": [f["best_epoch"] for f in folds],
            "seconds": [f["seconds"] for f in folds], "folds": len(folds), "folds_total": metrics["folds_total"]}


def summarise(args, variants: list[tuple[str, list[str]]], seeds: list[int]) -> dict:
    rows = []
    for name, overrides in variants:
        per_seed = {}
        for seed in seeds:
            # fgcme.py and aguilar.py name a row's run folder by its config stem (lower case)
            path = run_dir(Path(args.out), name, seed) / args.row.lower() / "metrics.json"
            if path.is_file():
                scores = fold_scores(json.loads(path.read_text()))
                if scores["folds"] == scores["folds_total"]:
                    per_seed[seed] = scores
        means = {k: [float(np.mean(s[k])) for s in per_seed.values()]
                 for k in ("val_ua", "test_ua", "test_wa", "network_test_ua", "seconds")}
        rows.append({"variant": name, "overrides": overrides, "seeds": sorted(per_seed),
                     "per_seed": per_seed, "mean": {k: float(np.mean(v)) if v else None for k, v in means.items()},
                     "seed_std": {k: float(np.std(v, ddof=1)) if len(v) > 1 else None for k, v in means.items()},
                     "fold_std_test_ua": float(np.std([u for s in per_seed.values() for u in s["test_ua"]], ddof=1))
                     if per_seed else None})
    complete = [r for r in rows if r["seeds"] == sorted(seeds)]
    chosen = max(complete, key=lambda r: r["mean"]["val_ua"])["variant"] if complete else None
    return {"bench": args.bench, "row": args.row, "seeds": seeds, "set": args.set, "rows": rows, "chosen": chosen}


def markdown(summary: dict) -> str:
    def fmt(row, key):
        mean = row["mean"][key]
        return "-" if mean is None else mean_std({"mean": mean, "std": row["seed_std"][key]}, percent=False)

    lines = [f"# {summary['row']}: variants over seeds {', '.join(map(str, summary['seeds']))} ({summary['bench']}.py)", "",
             "Common overrides: " + (" ".join(summary["set"]) or "none") + ".", "",
             "Per seed, a 5-fold run; a cell is the mean over seeds of the per-seed mean over folds, ± the std of "
             "the per-seed means (ddof 1). Validation UA is the back-end's when the runs have one (else the "
             "network's best epoch); the variant with the best mean validation UA is chosen (**bold**); the test "
             "part plays no part in the choice.", "",
             "| variant | overrides | seeds | val UA | test UA | test WA | network test UA | test UA per seed | std over all folds | s / fold |",
             "|---|---|---|---:|---:|---:|---:|---|---:|---:|"]
    for r in summary["rows"]:
        name = f"**{r['variant']}**" if r["variant"] == summary["chosen"] else r["variant"]
        head = f"| {name} | {' '.join(r['overrides']) or '-'} | {len(r['seeds'])} |"
        if not r["seeds"]:
            lines.append(head + " - | - | - | - | - | - | - |")
            continue
        per_seed = ", ".join(f"{np.mean(s['test_ua']):.3f}" for s in r["per_seed"].values())
        lines.append(f"{head} {fmt(r, 'val_ua')} | {fmt(r, 'test_ua')} | {fmt(r, 'test_wa')} | "
                     f"{fmt(r, 'network_test_ua')} | {per_seed} | {r['fold_std_test_ua']:.3f} | "
                     f"{r['mean']['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bench", choices=("fgcme", "aguilar"), required=True)
    parser.add_argument("--row", required=True, help="one row of that benchmark (e.g. fgcme, H-MM-4)")
    parser.add_argument("--before", default="", help="rows the row needs run first in the same folder "
                        "(e.g. H-MM-4 for teacher-student); not summarised")
    parser.add_argument("--variant", action="append", required=True, help="NAME=OVERRIDE[,OVERRIDE...] (repeatable)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--set", action="append", default=[], help="an override for every variant (repeatable)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (each on --threads torch threads)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", required=True)
    parser.add_argument("--results", default="", help="write PREFIX.md and PREFIX.json")
    parser.add_argument("--summary-only", action="store_true", help="only summarise the runs already in OUT")
    args = parser.parse_args(argv)
    variants = [parse_variant(v) for v in args.variant]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    if not args.summary_only:
        jobs = [(name, overrides, seed) for seed in seeds for name, overrides in variants]
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            codes = list(pool.map(lambda job: run_one(args, *job), jobs))
        if any(codes):
            print(f"{sum(1 for c in codes if c)} of {len(codes)} runs failed; summarising the rest", file=sys.stderr)
    summary = summarise(args, variants, seeds)
    text = markdown(summary)
    print(text)
    if args.results:
        from emofuse.io import atomic_write_text

        prefix = Path(args.results)
        atomic_write_text(prefix.with_suffix(".md"), text)
        atomic_write_text(prefix.with_suffix(".json"), json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
