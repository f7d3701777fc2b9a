"""`emofuse train CONFIG [key=value ...]` and `emofuse report RUN_DIR [RUN_DIR ...]`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table


def train(
    config: Path = typer.Argument(..., help="Experiment YAML, e.g. configs/ravdess4/b-aco-1.yaml."),
    overrides: Optional[List[str]] = typer.Argument(
        None, help="Dotted overrides: trainer.max_epochs=1 model.dropout=0.4 fold=0 run_dir=/tmp/x", metavar="[KEY=VALUE]...",
    ),
) -> None:
    """Train and test every fold of the config's protocol (or fold=K); resumes an interrupted run."""
    from emofuse.training.config import check_run_dir, load_config
    from emofuse.training.run import is_rank_zero, quiet_lightning, run_experiment

    out, err = Console(highlight=False), Console(stderr=True, highlight=False)
    cfg = load_config(config, list(overrides or []))  # every key and name checked before any work
    check_run_dir(cfg.resolved_run_dir())
    quiet_lightning()
    log = (lambda line: err.print(escape(line))) if is_rank_zero() else (lambda line: None)
    log(f"run {cfg.resolved_run_dir()}: {cfg.model_name} on {cfg.corpus}, protocol {cfg.protocol.name}, seed {cfg.seed}")
    run = run_experiment(cfg, log=log, progress=err.is_terminal)
    if is_rank_zero():
        out.print(run_table(run))
        out.print(f"[bold green]wrote[/] {escape(run['run_dir'])}/metrics.json, report.md, confusion.png")
        if cfg.fold is None and run.get("folds"):
            from emofuse.training.export import export_run

            # The deployable artefact: the fold with the best validation score, never chosen by test.
            model_dir = export_run(run["run_dir"], Path(run["run_dir"]) / "model")
            out.print(f"[bold green]exported[/] {escape(str(model_dir))} (try: emofuse predict {escape(str(model_dir))} FILE)")


def run_table(run: dict) -> Table:
    """Per-fold test scores and the mean ± std row, in percent."""
    # Imported here: `emofuse serve` and `emofuse predict` load this module and need no training package.
    from emofuse.training.metrics import HEADLINE, NAMES, mean_std
    from emofuse.training.report import is_fitted

    table = Table(title=f"{run.get('model')} — {run.get('corpus')} (test, %)", title_justify="left")
    table.add_column("fold")
    for key in HEADLINE:
        table.add_column(NAMES[key], justify="right")
    fitted = is_fitted(run)  # the linear probe: C chosen on validation, no epochs
    table.add_column("C" if fitted else "best epoch", justify="right")
    for f in run["folds"]:
        chosen = f"{f['backend']['C']:g}" if fitted else str(f.get("best_epoch"))
        table.add_row(str(f["fold"]), *[f"{100 * f['test'][k]:.1f}" for k in HEADLINE], chosen)
    s = run.get("summary", {})
    if s:
        table.add_row("mean ± std", *[mean_std(s[k]) for k in HEADLINE], "", style="bold")
    return table


def report(
    run_dirs: List[Path] = typer.Argument(..., help="Run directories written by `emofuse train`."),
    out_file: Optional[Path] = typer.Option(None, "--out", "-o", help="Also write the table as Markdown here."),
) -> None:
    """Several runs side by side, one row per run (as Table 2 of Aguilar et al. 2019 reads)."""
    from emofuse.io import atomic_write_text
    from emofuse.training.report import STD_NOTE, compare_runs

    out = Console(highlight=False)
    rows, markdown = compare_runs(run_dirs)
    table = Table(title=f"Test results ({STD_NOTE})", title_justify="left")
    for i, column in enumerate(rows[0]):
        table.add_column(column, justify="left" if i < 2 or column in ("Corpus", "Protocol", "Folds") else "right")
    for row in rows:
        table.add_row(*[escape(v) for v in row.values()])
    out.print(table)
    if out_file is not None:
        atomic_write_text(out_file, markdown + "\n")
        out.print(f"[bold green]wrote[/] {escape(str(out_file))}")


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("report")(report)
