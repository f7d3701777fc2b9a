"""Benchmark: Aguilar et al. 2019, Tables 2 and 3, on RAVDESS 4-class, 5-fold actor-exclusive CV.

Runs the configs under `configs/ravdess4/` (or another folder) row by row through the real
training engine (`emofuse.training.loop.train_fold`) and prints the paper's two tables:
Table 2 (B-ACO-1, H-ACO, H-MM-1..4) and Table 3 (multi-view variants: only the acoustic view
is tested). For every GMU model it also reports the mean gate z over the real words of the
test parts (the acoustic share; RAVDESS words are the same two statements for every emotion,
so a sensible model leans towards acoustics), and for attention models the mean attention
entropy relative to uniform.

Rows needing a trained teacher (MV-frozen, teacher-student*) read, for fold K, the H-MM-4
run's `fold-K` of this same benchmark (same folds, same training speakers), so H-MM-4 must
be in the row list before them.

    python benchmarks/aguilar.py                          # the paper's settings (slow on CPU)
    python benchmarks/aguilar.py --set model.hidden=64 --set optim.lr=1e-3 \
        --rows B-ACO-1,H-MM-4,teacher-student --out runs/bench-aguilar-h64

Results: OUT/<row>/ (the usual run directories), OUT/aguilar.md and OUT/aguilar.json.
Every fold is resumable: a fold whose metrics.json exists is read, not retrained.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch

from emofuse.io import atomic_write_text
from emofuse.training.config import load_config, save_config
from emofuse.training.features import load_labelled
from emofuse.training.loop import eval_loader, load_fold_model, quiet_lightning, train_fold
from emofuse.training.metrics import classification_metrics  # noqa: F401  (documents where UA/WA come from)
from emofuse.training.report import read_json, run_summary, write_json, write_run_report
from emofuse.training.splits import make_folds

TABLE2 = ["B-ACO-1", "H-ACO", "H-MM-1", "H-MM-2", "H-MM-3", "H-MM-4"]
TABLE3 = ["multiview-b-lex", "multiview-h-mm-4", "multiview-h-mm-4-random", "multiview-frozen",
          "teacher-student", "teacher-student-attn"]
TEACHER_ROWS = {"multiview-frozen", "teacher-student", "teacher-student-attn"}
DEFAULT_ROWS = TABLE2 + ["multiview-h-mm-4", "teacher-student"]


def stem(row: str) -> str:
    return row.lower()


def data_key(cfg) -> tuple:
    d = cfg.data
    return (d.manifest, d.corpus, d.path, d.store, d.label_set, d.acoustic, d.words, d.align)


def explain_stats(cfg, data, fold, fold_dir: Path, result: dict) -> dict:
    """Mean GMU gate and attention entropy of the best checkpoint over the test part's real words."""
    model, collator = load_fold_model(cfg, data, fold, fold_dir)
    gates, gate_by_class, entropies = [], {c: [] for c in data.classes}, []
    gate_by_word: dict[str, list[float]] = {}
    index = {it.id: i for i, it in enumerate(data.items)}
    with torch.no_grad():
        for batch in eval_loader(cfg, collator, fold.test):
            out = model(batch)
            if "gate" in out.explain:
                g = out.explain["gate"]  # (B, W)
                gates.append(g[batch.word_mask])
                for b, y in enumerate(batch.labels.tolist()):
                    gate_by_class[data.classes[y]].append(g[b][batch.word_mask[b]])
                    words = data.items[index[batch.ids[b]]].words or []
                    for w, value in zip(words, g[b][batch.word_mask[b]].tolist()):
                        gate_by_word.setdefault(w, []).append(value)
            if "attention" in out.explain:
                a = out.explain["attention"]  # (B, W)
                n = batch.word_mask.sum(1).clamp(min=2).float()
                h = -(a.clamp(min=1e-12).log() * a).sum(1)
                entropies.append(h / n.log())  # 1 = uniform over the real words
    stats: dict = {}
    if gates:
        stats["gate_mean"] = float(torch.cat(gates).mean())
        stats["gate_by_class"] = {c: float(torch.cat(v).mean()) for c, v in gate_by_class.items() if v}
        stats["gate_by_word"] = {w: float(np.mean(v)) for w, v in sorted(gate_by_word.items(), key=lambda kv: -len(kv[1]))[:20]}
    if entropies:
        stats["attention_entropy"] = float(torch.cat(entropies).mean())
    return stats


def run_row(row: str, args, data_cache: dict, log) -> dict:
    path = Path(args.config_dir) / f"{stem(row)}.yaml"
    run_dir = Path(args.out) / stem(row)
    overrides = list(args.set) + [f"run_dir={run_dir}", "trainer.progress=false"]
    if stem(row) in TEACHER_ROWS:
        overrides.append(f"model.teacher_checkpoint={Path(args.out) / 'h-mm-4'}/fold-{{fold}}")
    cfg = load_config(path, overrides)
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
        fold_cfg = copy.deepcopy(cfg)
        if "teacher_checkpoint" in fold_cfg.model:
            fold_cfg.model["teacher_checkpoint"] = str(fold_cfg.model["teacher_checkpoint"]).replace(
                "{fold}", str(fold.index))
        if (fold_dir / "metrics.json").is_file():
            result = read_json(fold_dir / "metrics.json")
        else:
            started = time.time()
            result = train_fold(fold_cfg, data, fold, fold_dir, log=lambda s: None)
            log(f"{row} fold {fold.index}: test UA {result['test']['ua']:.3f} WA {result['test']['wa']:.3f} "
                f"(best epoch {result['best_epoch']}, {time.time() - started:.0f} s)")
        explain_path = fold_dir / "explain.json"
        if explain_path.is_file():
            result["explain"] = read_json(explain_path)
        else:
            result["explain"] = explain_stats(fold_cfg, data, fold, fold_dir, result)
            write_json(explain_path, result["explain"])
        results.append(result)
    run = run_summary(cfg.to_dict(), data.classes, results, len(folds))
    write_run_report(run_dir, run, cfg.to_dict())
    return {"row": row, "model": cfg.model_name, "run_dir": str(run_dir), "settings": cfg.model_settings,
            "folds": results, "summary": run["summary"]}


def summary(row: dict) -> dict:
    """The numbers of one row without per-class detail: per-fold UA/WA, seconds, gate, attention."""
    return {
        "row": row["row"], "model": row["model"], "settings": row["settings"],
        "ua": [f["test"]["ua"] for f in row["folds"]], "wa": [f["test"]["wa"] for f in row["folds"]],
        "seconds": [f["seconds"] for f in row["folds"]], "best_epoch": [f["best_epoch"] for f in row["folds"]],
        "explain": [f.get("explain", {}) for f in row["folds"]],
    }


def mean_std(values: list[float], percent: bool = True) -> str:
    if not values:
        return "-"
    scale = 100.0 if percent else 1.0
    v = np.asarray(values, dtype=np.float64) * scale
    std = v.std(ddof=1) if len(v) > 1 else float("nan")
    return f"{v.mean():.1f} ± {std:.1f}" if percent else f"{v.mean():.3f} ± {std:.3f}"


def table(rows: list[dict]) -> str:
    header = ["Row", "Model", "UA (%)", "WA (%)", "s / fold", "mean gate z", "attn. entropy", "folds"]
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    for r in rows:
        folds = r["folds"]
        gate = [f["explain"]["gate_mean"] for f in folds if "gate_mean" in f.get("explain", {})]
        ent = [f["explain"]["attention_entropy"] for f in folds if "attention_entropy" in f.get("explain", {})]
        secs = [f["seconds"] for f in folds]
        lines.append("| " + " | ".join([
            r["row"], r["model"],
            mean_std([f["test"]["ua"] for f in folds]), mean_std([f["test"]["wa"] for f in folds]),
            f"{np.mean(secs):.0f}" if secs else "-",
            mean_std(gate, percent=False) if gate else "-", mean_std(ent, percent=False) if ent else "-",
            str(len(folds)),
        ]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-dir", default="configs/ravdess4")
    parser.add_argument("--rows", default=",".join(DEFAULT_ROWS),
                        help=f"comma-separated; Table 2: {', '.join(TABLE2)}; Table 3: {', '.join(TABLE3)}")
    parser.add_argument("--set", action="append", default=[], help="config override, e.g. model.hidden=64 (repeatable)")
    parser.add_argument("--folds", default=None, help="comma-separated fold indices (default: all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="runs/bench-aguilar")
    parser.add_argument("--results", default="benchmarks/results/aguilar",
                        help="also write the tables here as .md and a summary as .json ('' = no)")
    args = parser.parse_args(argv)
    args.folds = None if args.folds is None else {int(x) for x in args.folds.split(",")}
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    if any(stem(r) in TEACHER_ROWS for r in rows) and "h-mm-4" in map(stem, rows):
        if rows.index(next(r for r in rows if stem(r) == "h-mm-4")) > min(
                i for i, r in enumerate(rows) if stem(r) in TEACHER_ROWS):
            parser.error("H-MM-4 (the teacher) must come before MV-frozen / teacher-student rows")
    torch.set_num_threads(args.threads)
    quiet_lightning()

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    data_cache: dict = {}
    done = []
    for row in rows:
        done.append(run_row(row, args, data_cache, log))
        report = [f"# Aguilar et al. 2019 on {Path(args.config_dir).name}",
                  "", f"Overrides: {' '.join(args.set) or '(none: the configs as written)'}; "
                  f"test UA/WA mean ± sample std over folds; model selection on validation speakers.",
                  "Mean gate z = GMU acoustic share over the real words of the test parts (1 = all acoustic);",
                  "attention entropy is relative to uniform over the words (1 = uniform).", ""]
        t2 = [r for r in done if r["row"] in TABLE2 or stem(r["row"]) not in TABLE3]
        t3 = [r for r in done if stem(r["row"]) in TABLE3]
        if t2:
            report += ["## Table 2 (multimodal and hierarchical)", "", table(t2), ""]
        if t3:
            report += ["## Table 3 (multi-view; the acoustic view alone is tested)", "", table(t3), ""]
        out = Path(args.out)
        atomic_write_text(out / "aguilar.md", "\n".join(report))
        write_json(out / "aguilar.json", {"overrides": args.set, "rows": done})
        if args.results:
            atomic_write_text(Path(args.results + ".md"), "\n".join(report))
            write_json(Path(args.results + ".json"), {"overrides": args.set, "rows": [summary(r) for r in done]})
    print((Path(args.out) / "aguilar.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
