"""`emofuse demo`: run the whole toolkit on the built-in corpus."""

from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table


def demo(
    out: Path = typer.Option(Path("emofuse-demo"), "--out", "-o", help="Folder for everything the demo writes."),
    workers: int = typer.Option(2, "--workers", "-w", min=1, help="Feature extraction processes."),
    overrides: Optional[List[str]] = typer.Argument(
        None, metavar="[KEY=VALUE]...",
        help="Overrides for the three demo configs, e.g. trainer.max_epochs=5 protocol.k=2.",
    ),
) -> None:
    """Prepare the built-in corpus, extract features with forced alignment, train B-ACO-1, B-LEX
    and H-MM-4 with speaker-exclusive CV, compare them, export the fused model, and explain a
    prediction on a held-out recording. Offline; a few minutes on a laptop CPU. Run it again to
    resume: finished features and folds are kept."""
    from emofuse.demo.pipeline import MODELS, run_demo
    from emofuse.training.metrics import HEADLINE, NAMES, mean_std

    out_console, err = Console(highlight=False), Console(stderr=True, highlight=False, soft_wrap=True)
    start = time.perf_counter()
    result = run_demo(out, list(overrides or []), workers=workers, log=lambda line: err.print(escape(line)),
                      progress=err.is_terminal)

    table = Table(title="Demo corpus, speaker-exclusive CV (test folds, mean ± std, %)", title_justify="left")
    table.add_column("model")
    table.add_column("modalities")
    for key in HEADLINE:
        table.add_column(NAMES[key], justify="right")
    modalities = {"b-aco-1": "acoustic", "b-lex": "lexical", "h-mm-4": "acoustic + lexical (GMU + attention)"}
    for name in MODELS:
        summary = result.summaries[name]
        table.add_row(name.upper(), modalities[name], *[mean_std(summary[k]) if k in summary else "-" for k in HEADLINE])
    out_console.print(table)

    p = result.prediction
    words = " ".join(
        f"{w['text']}[{w['gate']:.2f}]" if w.get("gate") is not None else w["text"] for w in p.get("words", [])
    )
    out_console.print(f"held-out recording {escape(p['id'])}: true [bold]{p['true_label']}[/], "
                      f"predicted [bold]{p['label']}[/] "
                      f"({', '.join(f'{k} {v:.2f}' for k, v in p['probabilities'].items())})")
    if words:
        out_console.print(escape(f"  words [acoustic share]: {words}"))
    d = result.out_dir
    out_console.print(f"\nfinished in {time.perf_counter() - start:.0f} s. Everything is in {escape(str(d))}:")
    for what, path in [("manifest", result.manifest), ("features", d / "features"), ("runs", d / "runs"),
                       ("comparison", d / "comparison.md"), ("model", result.model_dir),
                       ("explanation", result.explanation)]:
        out_console.print(f"  {what:<12} {escape(str(path))}")
    out_console.print("\nnext:")
    for line in [
        f"emofuse predict {result.model_dir} your.wav --transcript 'what was said' --html out.html",
        f"emofuse serve {result.model_dir}          # web page at http://127.0.0.1:8000",
        f"emofuse report {' '.join(str(result.runs[m]) for m in MODELS)}",
        "emofuse prepare ravdess PATH/TO/RAVDESS --out ravdess.jsonl   # then: emofuse train configs/ravdess4/h-mm-4.yaml",
    ]:
        out_console.print(f"  {escape(line)}", soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
