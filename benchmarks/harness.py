"""Benchmarks as recipes: rows (config files) run by the one fold loop, `training.run.run_folds`.

A benchmark (`benchmarks/aguilar.py`, `fgcme.py`, `can_nmt.py`) is a list of rows, a function
that measures statistics on each finished fold (`after_fold`, cached in `fold-K/explain.json`
and measured again when the fold's tested checkpoint changes) and a table. This holds what
they share: their command-line options, the labelled data read once per data setting for all
rows, and the loop over rows that writes OUT/<row>/ (the usual run directories) and hands each
finished row to the recipe's report.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Sequence

from emofuse.io import atomic_write_text, write_json
from emofuse.training.config import ExperimentConfig, load_config
from emofuse.training.data import LabelledData
from emofuse.training.fold import Log
from emofuse.training.run import AfterFold, protocol_folds, quiet_lightning, run_folds
from emofuse.training.metrics import summarise


class DataCache:
    """The labelled data of each data setting, read (and extracted) once for all rows.

    Keyed by the whole `data` section: rows that read the same corpus and features with the
    same settings share one `LabelledData`."""

    def __init__(self, log: Log = print):
        self.log = log
        self._data: dict[str, LabelledData] = {}

    def get(self, cfg: ExperimentConfig) -> LabelledData:
        from emofuse.training.corpus import load_labelled

        key = json.dumps(cfg.to_dict()["data"], sort_keys=True, default=str)
        if key not in self._data:
            self._data[key] = load_labelled(cfg, log=self.log, progress=False)
        return self._data[key]


def stem(row: str) -> str:
    """A row's config file stem and run folder: its name in lower case (H-MM-4 → h-mm-4)."""
    return row.lower()


def run_row(row: str, config: Path, overrides: Sequence[str], run_dir: Path, cache: DataCache, *,
            folds: set[int] | None = None, after_fold: AfterFold | None = None, log: Log = print) -> dict:
    """One row: its config with `overrides`, every fold (or `folds`) trained or read back in
    `run_dir`, `after_fold` measured on each. Returns the row's settings, its per-fold results
    (with `explain`) and their mean ± std."""
    cfg = load_config(config, [*overrides, f"run_dir={run_dir}", "trainer.progress=false"])
    data = cache.get(cfg)
    run = run_folds(cfg, data, protocol_folds(cfg, data), run_dir, log=lambda line: log(f"{row} {line}"),
                    only=folds, after_fold=after_fold, quiet=True)
    results = run["selected"]
    settings = cfg.to_dict()
    return {"row": row, "model": cfg.model_name, "run_dir": str(run_dir), "settings": cfg.model_settings,
            "optim": settings["optim"], "trainer": settings["trainer"], "folds": results,
            "summary": summarise([f["test"] for f in results]) if results else {}}


def row_arguments(description: str, rows: Sequence[str], out: str, rows_help: str | None = None) -> argparse.ArgumentParser:
    """The options every benchmark takes; a recipe adds its own."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config-dir", default="configs/ravdess4")
    parser.add_argument("--rows", default=",".join(rows), help=rows_help or f"comma-separated, from {', '.join(rows)}")
    parser.add_argument("--set", action="append", default=[], help="config override, e.g. trainer.max_epochs=8 (repeatable)")
    parser.add_argument("--folds", default=None, help="comma-separated fold indices (default: all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=out)
    return parser


def run_rows(args: argparse.Namespace, name: str, after_fold: AfterFold | None, markdown: Callable[[list[dict]], str],
             overrides: Callable[[str], list[str]] = lambda row: []) -> list[dict]:
    """Run the rows of `args.rows` in order (`overrides(row)`: settings only that row gets).
    After each row, OUT/<name>.md (`markdown` of the rows done so far) and OUT/<name>.json
    (the rows with every fold's result) are written again; at the end the markdown is printed."""
    import torch

    torch.set_num_threads(args.threads)
    quiet_lightning()

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    out = Path(args.out)
    folds = None if args.folds is None else {int(x) for x in str(args.folds).split(",")}
    cache = DataCache(log)
    done: list[dict] = []
    for row in (r.strip() for r in args.rows.split(",") if r.strip()):
        done.append(run_row(row, Path(args.config_dir) / f"{stem(row)}.yaml", [*args.set, *overrides(row)],
                            out / stem(row), cache, folds=folds, after_fold=after_fold, log=log))
        atomic_write_text(out / f"{name}.md", markdown(done))
        write_json(out / f"{name}.json", {"overrides": args.set, "rows": done})
    print((out / f"{name}.md").read_text())
    return done


def report_text(args: argparse.Namespace, title: str, notes: Sequence[str], body: str, per_class: bool = True) -> str:
    """A benchmark's markdown: its title, the overrides it ran with and what its columns mean
    (`notes`, the first continuing the overrides sentence), then its table(s)."""
    overrides = " ".join(args.set) or "(none: the configs as written)"
    first, *rest = notes
    lines = [f"# {title} on {Path(args.config_dir).name}", "", f"Overrides: {overrides}; {first}", *rest, "", body, ""]
    if per_class:
        lines += ["Per-class precision, recall, F1 and confusion matrices: `<row>/report.md` of each run.", ""]
    return "\n".join(lines)


def row_table(header: Sequence[str], rows: Sequence[dict], cells: Callable[[dict], list[str]], text_columns: int = 1) -> str:
    """A GitHub table, one line per benchmark row (`cells(row)`); the first `text_columns`
    left-aligned, the numbers right-aligned."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * text_columns + "---:|" * (len(header) - text_columns)]
    return "\n".join(lines + ["| " + " | ".join(cells(r)) + " |" for r in rows])


def fold_values(row: dict, name: str) -> list:
    """One figure of every fold of a row: a test metric (`ua`, `wa`, `macro_f1`), else an
    `explain` statistic (folds without it are left out), else a field of the fold's result."""
    folds = row["folds"]
    if any(name in f["test"] for f in folds):
        return [f["test"][name] for f in folds]
    if any(name in f.get("explain", {}) for f in folds):
        return [f["explain"][name] for f in folds if name in f.get("explain", {})]
    return [f[name] for f in folds if name in f]
