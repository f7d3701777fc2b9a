"""The Whisper front end's rows on RAVDESS: finished `emofuse train` run directories, one per
(row, seed), summarised as test UA / WA mean +- std over folds per seed, and the mean +- std of
the per-seed means over seeds. The runs themselves are `emofuse train CONFIG seed=S ...`
(commands in the results file); this reads their metrics.json and writes one table.

    python -m benchmarks.whisper_frontend --results benchmarks/results/whisper_frontend \\
        --row "ravdess8|linear probe, Whisper frames, speaker z-scoring|configs/ravdess8/whisper/linear-probe.yaml|/tmp/ev/r8/probe-s{seed}" \\
        --seeds 0,1,2 ...

A row is CORPUS|LABEL|CONFIG|RUN_DIR (with {seed}) [|OVERRIDES]; a seed whose run directory has
not finished every fold is listed as missing, never averaged in.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from emofuse.io import atomic_write_text, write_json


def stats(values) -> dict:
    """mean and sample std (ddof 1; NaN for one value), as `emofuse report` gives them."""
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else float("nan"), "n": int(v.size)}


def read_run(run_dir: Path) -> dict | None:
    path = run_dir / "metrics.json"
    if not path.is_file():
        return None
    metrics = json.loads(path.read_text(encoding="utf-8"))
    if metrics.get("folds_done") != metrics.get("folds_total"):
        return None
    folds = metrics["folds"]
    ua = [f["test"]["ua"] for f in folds]
    wa = [f["test"]["wa"] for f in folds]
    return {"ua": stats(ua), "wa": stats(wa), "per_fold_ua": [round(x, 4) for x in ua],
            "folds": len(folds), "run_dir": str(run_dir)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--row", action="append", default=[], help="CORPUS|LABEL|CONFIG|RUN_DIR{seed}[|OVERRIDES]")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--results", type=Path, required=True, help="PREFIX: writes PREFIX.json and PREFIX.md")
    parser.add_argument("--note", default="", help="a paragraph for the top of the table")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    for spec in args.row:
        corpus, label, config, pattern, *rest = spec.split("|")
        runs = {s: read_run(Path(pattern.format(seed=s))) for s in seeds}
        done = {s: r for s, r in runs.items() if r is not None}
        row = {"corpus": corpus, "row": label, "config": config, "overrides": rest[0] if rest else "",
               "seeds": {str(s): r for s, r in done.items()}, "missing_seeds": [s for s in seeds if s not in done]}
        if done:
            row["over_seeds"] = {k: stats([r[k]["mean"] for r in done.values()]) for k in ("ua", "wa")}
        rows.append(row)
        print(json.dumps(row, default=float), flush=True)
    lines = ["# The Whisper front end on RAVDESS", "", args.note, "",
             "| corpus | row | config (+ overrides) | seeds | UA per seed (mean ± std over folds) | UA over seeds | WA over seeds |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        per_seed = "; ".join(f"s{s}: {_fmt(r['ua'])}" for s, r in row["seeds"].items()) or "none finished"
        over = row.get("over_seeds")
        lines.append(f"| {row['corpus']} | {row['row']} | `{row['config']}`{(' ' + row['overrides']) if row['overrides'] else ''} "
                     f"| {','.join(row['seeds']) or '-'} | {per_seed} | {_fmt(over['ua']) if over and len(row['seeds']) > 1 else '-'} "
                     f"| {_fmt(over['wa']) if over and len(row['seeds']) > 1 else '-'} |")
    atomic_write_text(args.results.with_suffix(".md"), "\n".join(lines) + "\n")
    write_json(args.results.with_suffix(".json"), {"rows": rows, "note": args.note})
    print(f"wrote {args.results}.md/.json")
    return 0


def _fmt(stat: dict) -> str:
    return f"{stat['mean']:.3f} ± {stat['std']:.3f}" if np.isfinite(stat["std"]) else f"{stat['mean']:.3f}"


if __name__ == "__main__":
    raise SystemExit(main())
