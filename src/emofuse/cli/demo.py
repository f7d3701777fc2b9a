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
    whisper_frames: bool = typer.Option(
        True, "--whisper-frames/--no-whisper-frames",
        help="Also train B-ACO-1 on Whisper encoder frames (a fourth row of the comparison).",
    ),
    overrides: Optional[List[str]] = typer.Argument(
        None, metavar="[KEY=VALUE]...",
        help="Overrides for every demo config, e.g. trainer.max_epochs=5 protocol.k=2.",
    ),
) -> None:
    """Prepare the built-in corpus, extract features with forced alignment, train B-ACO-1, B-LEX
    and H-MM-4 (and B-ACO-1 on Whisper frames) with speaker-exclusive CV, compare them, export
    the fused model, and explain its prediction on a held-out recording whose words Whisper
    hears (no transcript given). Offline; a few minutes on a laptop CPU. Run it again to
    resume: finished features and folds are kept."""
    from emofuse.demo.pipeline import run_demo
    from emofuse.training.metrics import HEADLINE, NAMES, mean_std

    out_console, err = Console(highlight=False), Console(stderr=True, highlight=False, soft_wrap=True)
    start = time.perf_counter()
    result = run_demo(out, list(overrides or []), workers=workers, log=lambda line: err.print(escape(line)),
                      progress=err.is_terminal, whisper_frames=whisper_frames)

    table = Table(title="Demo corpus, speaker-exclusive CV (test folds, mean ± std, %)", title_justify="left")
    table.add_column("model")
    table.add_column("modalities")
    for key in HEADLINE:
        table.add_column(NAMES[key], justify="right")
    modalities = {"b-aco-1": "acoustic", "b-lex": "lexical", "h-mm-4": "acoustic + lexical (GMU + attention)",
                  "b-aco-1-whisper": "acoustic (Whisper frames)"}
    for name in result.models:
        summary = result.summaries[name]
        table.add_row(name.upper(), modalities[name], *[mean_std(summary[k]) if k in summary else "-" for k in HEADLINE])
    out_console.print(table)

    p = result.prediction
    words = " ".join(
        f"{w['text']}[{w['gate']:.2f}]" if w.get("gate") is not None else w["text"] for w in p.get("words", [])
    )
    cv = ", ".join(f"{m.upper()} {v:.2f}" for m, v in p["cv_p_true"].items() if v is not None)
    out_console.print(f"held-out recording {escape(p['id'])} ({escape(str(p['kind']))}), no transcript given: "
                      f"true [bold]{p['true_label']}[/], predicted [bold]{p['label']}[/] "
                      f"({', '.join(f'{k} {v:.2f}' for k, v in p['probabilities'].items())})")
    out_console.print(escape(f"  said: {p['true_transcript']!r}"))
    out_console.print(escape(f"  heard by {p['word_source']}: {p['heard']!r}"))
    if words:
        out_console.print(escape(f"  words [acoustic share]: {words}"))
    out_console.print(escape(f"  cross-validated probability of {p['true_label']} (transcript words): {cv}; "
                             f"picked as: {p['showcase_rule']}"))
    d = result.out_dir
    out_console.print(f"\nfinished in {time.perf_counter() - start:.0f} s. Everything is in {escape(str(d))}:")
    for what, path in [("manifest", result.manifest), ("features", d / "features"), ("runs", d / "runs"),
                       ("comparison", d / "comparison.md"), ("model", result.model_dir),
                       ("explanation", result.explanation)]:
        out_console.print(f"  {what:<12} {escape(str(path))}")
    out_console.print("\nnext:")
    for line in [
        f"emofuse predict {result.model_dir} your.wav --html out.html   # Whisper hears the words",
        f"emofuse serve {result.model_dir}          # web page at http://127.0.0.1:8000",
        f"emofuse report {' '.join(str(result.runs[m]) for m in result.models)}",
        "emofuse prepare ravdess PATH/TO/RAVDESS --out ravdess.jsonl   # then: emofuse train configs/ravdess4/h-mm-4.yaml",
    ]:
        out_console.print(f"  {escape(line)}", soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
