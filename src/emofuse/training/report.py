"""Run reports: `metrics.json`, `report.md` (a table in the papers' style) and a confusion-matrix PNG.

Tables read the way Table 2 of Aguilar et al. (2019) does: one row per model, WA and UA
(plus macro- and weighted-F1) in percent as mean ± std over folds (sample std, ddof = 1;
see training.metrics). `compare_runs` lays several run directories side by side for
`emofuse report`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from emofuse.errors import DataError
from emofuse.io import atomic_path, atomic_write_text, read_json, write_json  # noqa: F401  (read_json, write_json: re-exported)
from emofuse.features.normalise import Normalisation
from emofuse.training.metrics import HEADLINE, NAMES, mean_std, summarise

STD_NOTE = "mean ± sample std (ddof=1) over folds, in percent"


def run_summary(config: dict, classes: Sequence[str], fold_results: Sequence[dict], total_folds: int) -> dict:
    """The run-level metrics.json: every finished fold's test metrics and their mean ± std."""
    tests = [f["test"] for f in fold_results]
    return {
        "name": config.get("name"),
        "corpus": config.get("corpus"),
        "model": config.get("model", {}).get("name"),
        "protocol": config.get("protocol", {}).get("name"),
        "backend": config.get("protocol", {}).get("backend"),  # protocol.backend, or None
        "classes": list(classes),
        "folds_done": len(fold_results),
        "folds_total": total_folds,
        "std": "sample (ddof=1)",
        "summary": summarise(tests) if tests else {},
        # with protocol.backend: the network's own classifier on the same test parts
        **({"network_summary": summarise([f["network_test"] for f in fold_results])}
           if tests and all("network_test" in f for f in fold_results) else {}),
        "folds": [
            {k: v for k, v in f.items() if k != "predictions"} for f in fold_results
        ],
        "seconds": float(sum(f.get("seconds", 0.0) for f in fold_results)),
    }


def summary_row(run: dict) -> dict[str, str]:
    s = run.get("summary", {})
    row = {"Model": str(run.get("model") or run.get("name")) + (f" + {run['backend']}" if run.get("backend") else "")}
    for key in HEADLINE:
        row[NAMES[key]] = mean_std(s[key]) if key in s else "-"
    row["Folds"] = f"{run.get('folds_done', 0)}/{run.get('folds_total', 0)}"
    return row


def markdown_table(rows: Sequence[dict[str, str]]) -> str:
    """A GitHub table; columns whose cells are all numbers (or mean ± std) are right-aligned."""
    if not rows:
        return ""
    header = list(rows[0])

    def numeric(column: str) -> bool:
        cells = [str(r.get(column, "")).replace("±", " ").split() for r in rows]
        return all(c and all(_is_number(part) for part in c) for c in cells)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if numeric(h) else "---" for h in header) + "|"]
    lines += ["| " + " | ".join(str(r.get(h, "")) for h in header) + " |" for r in rows]
    return "\n".join(lines)


def _is_number(text: str) -> bool:
    try:
        float(text.rstrip("%"))
    except ValueError:
        return text in ("-",)
    return True


def report_markdown(run: dict, config: dict | None = None) -> str:
    """report.md of one run: the headline table, per-fold rows, per-class scores, confusion."""
    classes = run["classes"]
    out = [f"# {run.get('name')} — {run.get('model')} on {corpus_label(run)}", ""]
    checks = run.get("data") or {}
    if checks.get("label_set"):
        ls = checks["label_set"]
        out += [f"Label set `{ls.get('name')}`: {', '.join(ls.get('classes', []))}"
                + (f" (mapped: {', '.join(f'{k} → {v or chr(8212)}' for k, v in ls['map'].items())}; — = left out)"
                   if ls.get("map") else "")
                + (f"; tested on corpus `{checks['corpora']['test']}`, trained and validated on "
                   f"`{checks['corpora'].get('train')}`" if checks.get("corpora", {}).get("test") else "") + ".", ""]
    for warning in checks.get("warnings", []):
        out += [f"> **Warning:** {warning}", ""]
    fitted = is_fitted(run)
    if config:
        d, o, t, p = (config.get(k, {}) for k in ("data", "optim", "trainer", "protocol"))
        mode = Normalisation.mode_of(d.get("normalise", True))
        how = (f"a class-balanced logistic regression on each clip's mean- and std-pooled frames, z-scored "
               + ("per speaker with each speaker's own utterances (no labels)" if mode == "speaker"
                  else "with the training part's statistics")
               + ", C chosen on the validation speakers; nothing trained by gradient") if fitted else (
            f"{o.get('name')} lr={o.get('lr')} wd={o.get('weight_decay')} clip={o.get('grad_clip')}, batch "
            f"{t.get('batch_size')}, ≤{t.get('max_epochs')} epochs (patience {t.get('patience')})")
        out += [
            f"Protocol `{p.get('name')}`"
            + (f" (k={p.get('k')})" if p.get("name") == "speaker-kfold" else "")
            + f", features acoustic=`{d.get('acoustic')}` words=`{d.get('words')}` align=`{d.get('align')}` "
            f"normalise=`{mode}`"
            + (f" trim=`{d['trim']}` s (speech span only)" if d.get("trim") is not None else "") + ", "
            f"label set `{d.get('label_set')}`; {how}, seed {config.get('seed')}."
            + (f" Weights averaged (EMA, decay {t['ema']} per step); validation and test use the average."
               if t.get("ema") else "")
            + (f" Validation: {p['val_speakers']} speaker(s) carved from each training part." if p.get("val_speakers") else "")
            + (" Refit: the number of epochs is chosen on the validation speakers, then a fresh network trained "
               "on training and validation speakers together for that many epochs is the one tested."
               if p.get("refit") else "")
            + (f" Back-end `{p['backend']}`: the network's output layer is replaced by a logistic regression on its "
               "utterance vectors" + (", z-scored per speaker with each speaker's own utterances (no labels)"
                                      if p["backend"] == "speaker-lr" else "")
               + ", C chosen on the validation speakers." if p.get("backend") else "")
            + _augment_note(config.get("augment") or {}),
            "",
        ]
    monitor = (config or {}).get("trainer", {}).get("monitor", "val_ua")
    chosen = "C chosen on the UA" if fitted else f"best epoch chosen on `{monitor}`"
    out += [f"Test results, {STD_NOTE}; {chosen} of the validation part (never the test part).", ""]
    out += [markdown_table([summary_row(run)]), ""]
    if run.get("network_summary"):
        network = {**run, "summary": run["network_summary"], "backend": None,
                   "model": f"{run.get('model')} (its own classifier)"}
        out += ["The same networks with their own output layer, before the back-end:", "",
                markdown_table([summary_row(network)]), ""]
    fold_rows = []
    for f in run["folds"]:
        row = {"Fold": str(f["fold"]), "Test speakers / part": f.get("name", "")}
        for key in HEADLINE:
            row[NAMES[key]] = f"{100 * f['test'][key]:.1f}"
        if fitted:
            row["C"] = f"{f['backend']['C']:g}"
        else:
            row["best epoch"] = str(f.get("best_epoch", "-"))
        score = f.get("val_score")
        row["val " + str(f.get("monitor", "score")).removeprefix("val_")] = f"{100 * score:.1f}" if score is not None else "-"
        row["n test"] = str(f["test"]["n"])
        fold_rows.append(row)
    out += ["## Folds", "", markdown_table(fold_rows), ""]
    layered = [f for f in run["folds"] if f.get("layer_weights")]
    if layered:  # hf:...#layers=all: the learned softmax share of each hidden state (0 = embeddings)
        rows = [{"Fold": str(f["fold"]), **{f"layer {i}": f"{w:.3f}" for i, w in enumerate(f["layer_weights"])}}
                for f in layered]
        out += ["## Encoder layer weights (softmax shares, learned with the model)", "", markdown_table(rows), ""]
    per_class = run.get("summary", {}).get("per_class")
    if per_class:
        rows = [{"Class": c, "Precision": f"{100 * v['precision']:.1f}", "Recall": f"{100 * v['recall']:.1f}",
                 "F1": f"{100 * v['f1']:.1f}"} for c, v in per_class.items()]
        out += ["## Per class (mean over folds)", "", markdown_table(rows), ""]
    confusion = run.get("summary", {}).get("confusion")
    if confusion:
        rows = [{"true \\ predicted": c, **{p: str(n) for p, n in zip(classes, line)}} for c, line in zip(classes, confusion)]
        out += ["## Confusion matrix (test parts of all folds summed)", "", markdown_table(rows), "",
                "![confusion matrix](confusion.png)", ""]
    return "\n".join(out)


def is_fitted(run: dict) -> bool:
    """Whether the run's model was fitted, not trained (the linear probe: `ModelEntry.fitted`):
    its folds record a back-end and no epoch."""
    folds = run.get("folds") or []
    return bool(folds) and all(f.get("best_epoch") is None and "backend" in f for f in folds)


def confusion_png(path: Path, confusion: Sequence[Sequence[int]], classes: Sequence[str], title: str) -> Path:
    """Row-normalised confusion matrix (recall per true class), counts in each cell; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(confusion, dtype=np.float64)
    rates = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    size = max(4.0, 0.9 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{rates[i, j]:.2f}\n({int(counts[i, j])})", ha="center", va="center", fontsize=8,
                    color="white" if rates[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=120)
    finally:
        plt.close(fig)
    return path


def _augment_note(a: dict) -> str:
    parts = []
    if a.get("time_masks") and a.get("time_width"):
        parts.append(f"{a['time_masks']} time span(s) of ≤{a['time_width']} frames")
    if a.get("feature_masks") and a.get("feature_width"):
        parts.append(f"{a['feature_masks']} feature band(s) of ≤{a['feature_width']} dimensions")
    return f" Training frames masked per utterance: {' and '.join(parts)}." if parts else ""


def corpus_label(run: dict) -> str:
    """The corpus a run used, or `train → test` for the cross-corpus protocol."""
    corpora = (run.get("data") or {}).get("corpora") or {}
    if corpora.get("test"):
        return f"{corpora.get('train')} → {corpora['test']}"
    return str(run.get("corpus"))


def write_run_report(run_dir: Path, run: dict, config: dict | None = None) -> None:
    if (Path(run_dir) / "data.json").is_file():  # training/checks.py: label set, corpora, warnings
        run["data"] = read_json(Path(run_dir) / "data.json")
    write_json(run_dir / "metrics.json", run)
    atomic_write_text(run_dir / "report.md", report_markdown(run, config))
    confusion = run.get("summary", {}).get("confusion")
    if confusion:
        confusion_png(run_dir / "confusion.png", confusion, run["classes"],
                      f"{run.get('model')} — {run.get('corpus')} ({run['folds_done']} fold(s))")


def load_run(run_dir: str | Path) -> dict:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(run_dir, "run directory not found")
    path = run_dir / "metrics.json"
    if not path.is_file():
        raise DataError(run_dir, "no metrics.json: the run has not finished a fold yet (run `emofuse train` first)")
    run = read_json(path)
    if "summary" not in run or "classes" not in run:
        raise DataError(path, "not a run metrics file (no summary/classes)")
    run["run_dir"] = str(run_dir)
    return run


def compare_runs(run_dirs: Sequence[str | Path]) -> tuple[list[dict[str, str]], str]:
    """Rows (one per run, Table 2 style) and the same as a markdown table."""
    rows = []
    for d in run_dirs:
        run = load_run(d)
        row = summary_row(run)
        row = {"Run": Path(d).name, **row, "Corpus": corpus_label(run), "Protocol": str(run.get("protocol"))}
        rows.append(row)
    note = f"\n\nTest results, {STD_NOTE}."
    return rows, markdown_table(rows) + note
