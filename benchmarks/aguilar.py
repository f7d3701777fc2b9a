"""Benchmark: Aguilar et al. 2019, Tables 2 and 3, on RAVDESS 4-class, 5-fold actor-exclusive CV.

Runs the configs under `configs/ravdess4/` (or another folder) row by row through the one
fold loop (`emofuse.training.run.run_folds`, via `benchmarks/harness.py`) and prints the paper's two tables:
Table 2 (B-ACO-1, H-ACO, H-MM-1..4) and Table 3 (multi-view variants: only the acoustic view
is tested). For every GMU model it also reports the mean gate z over the real words of the
test parts (the acoustic share; RAVDESS words are the same two statements for every emotion,
so a sensible model leans towards acoustics), and for attention models the mean attention
entropy relative to uniform.

Rows needing a trained teacher (MV-frozen, teacher-student*) read, for fold K, the H-MM-4
run's `fold-K` of this same benchmark (same folds, same training speakers), so H-MM-4 must
be in the row list before them.

    python -m benchmarks.aguilar                          # the paper's settings (slow on CPU)
    python -m benchmarks.aguilar --set model.hidden=64 --set optim.lr=1e-3 \
        --rows B-ACO-1,H-MM-4,teacher-student --out runs/bench-aguilar-h64

Results: OUT/<row>/ (the usual run directories), OUT/aguilar.md and OUT/aguilar.json.
Every fold is resumable: a fold whose metrics.json exists is read, not retrained.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from benchmarks.harness import fold_values, report_text, row_arguments, row_table, run_rows, stem
from emofuse.io import atomic_write_text
from emofuse.training.fold import eval_loader, load_fold_model
from emofuse.training.metrics import mean_std
from emofuse.training.report import write_json

TABLE2 = ["B-ACO-1", "H-ACO", "H-MM-1", "H-MM-2", "H-MM-3", "H-MM-4"]
TABLE3 = ["multiview-b-lex", "multiview-h-mm-4", "multiview-h-mm-4-random", "multiview-frozen",
          "teacher-student", "teacher-student-attn"]
TEACHER_ROWS = {"multiview-frozen", "teacher-student", "teacher-student-attn"}
DEFAULT_ROWS = TABLE2 + ["multiview-h-mm-4", "teacher-student"]


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


def summary(row: dict) -> dict:
    """The numbers of one row without per-class detail: per-fold UA/WA, seconds, gate, attention."""
    return {
        "row": row["row"], "model": row["model"], "settings": row["settings"],
        "ua": [f["test"]["ua"] for f in row["folds"]], "wa": [f["test"]["wa"] for f in row["folds"]],
        "seconds": [f["seconds"] for f in row["folds"]], "best_epoch": [f["best_epoch"] for f in row["folds"]],
        "explain": [f.get("explain", {}) for f in row["folds"]],
    }


def table(rows: list[dict]) -> str:
    header = ["Row", "Model", "UA (%)", "WA (%)", "s / fold", "mean gate z", "attn. entropy", "folds"]
    return row_table(header, rows, lambda r: [
        r["row"], r["model"], mean_std(fold_values(r, "ua")), mean_std(fold_values(r, "wa")),
        f"{np.mean(fold_values(r, 'seconds')):.0f}" if r["folds"] else "-",
        mean_std(fold_values(r, "gate_mean"), percent=False), mean_std(fold_values(r, "attention_entropy"), percent=False),
        str(len(r["folds"]))], text_columns=2)


def main(argv: list[str] | None = None) -> int:
    parser = row_arguments(__doc__.split("\n")[0], DEFAULT_ROWS, "runs/bench-aguilar",
                           f"comma-separated; Table 2: {', '.join(TABLE2)}; Table 3: {', '.join(TABLE3)}")
    parser.add_argument("--results", default="benchmarks/results/aguilar",
                        help="also write the tables here as .md and a summary as .json ('' = no)")
    args = parser.parse_args(argv)
    rows = [stem(r.strip()) for r in args.rows.split(",") if r.strip()]
    if any(r in TEACHER_ROWS for r in rows) and "h-mm-4" in rows:
        if rows.index("h-mm-4") > min(i for i, r in enumerate(rows) if r in TEACHER_ROWS):
            parser.error("H-MM-4 (the teacher) must come before MV-frozen / teacher-student rows")
    out = Path(args.out)

    def markdown(done: list[dict]) -> str:
        t2 = [r for r in done if r["row"] in TABLE2 or stem(r["row"]) not in TABLE3]
        t3 = [r for r in done if stem(r["row"]) in TABLE3]
        tables = []
        if t2:
            tables += ["## Table 2 (multimodal and hierarchical)", "", table(t2), ""]
        if t3:
            tables += ["## Table 3 (multi-view; the acoustic view alone is tested)", "", table(t3), ""]
        text = report_text(args, "Aguilar et al. 2019", [
            "test UA/WA mean ± sample std over folds; model selection on validation speakers.",
            "Mean gate z = GMU acoustic share over the real words of the test parts (1 = all acoustic);",
            "attention entropy is relative to uniform over the words (1 = uniform)."],
            "\n".join(tables[:-1]), per_class=False)
        if args.results:
            atomic_write_text(Path(args.results + ".md"), text)
            write_json(Path(args.results + ".json"), {"overrides": args.set, "rows": [summary(r) for r in done]})
        return text

    def teacher(row: str) -> list[str]:  # fold K of a teacher row reads fold K of this H-MM-4 run
        return [f"model.teacher_checkpoint={out / 'h-mm-4'}/fold-{{fold}}"] if stem(row) in TEACHER_ROWS else []

    run_rows(args, "aguilar", explain_stats, markdown, teacher)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
