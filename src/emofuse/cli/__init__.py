"""The `emofuse` command line: thin; it parses arguments and calls the pipeline packages.

Each command group lives in its own module here and adds itself to `app` through a
`register(app)` function, so the stages stay independent.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer
from rich.console import Console
from rich.markup import escape

from emofuse.errors import EmofuseError

# Nothing may reach a model hub at run time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

app = typer.Typer(
    name="emofuse",
    help="Speech emotion recognition from how words are said and what is said.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err = Console(stderr=True)

COMMAND_MODULES = ("data", "extract", "train", "predict", "serve", "export", "demo")

for _name in COMMAND_MODULES:
    try:
        _module = importlib.import_module(f"emofuse.cli.{_name}")
    except ModuleNotFoundError as exc:  # a stage not built yet leaves its commands out
        if exc.name != f"emofuse.cli.{_name}":
            raise
        continue
    _module.register(app)


def main() -> None:
    try:
        app()
    except EmofuseError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except OSError as exc:  # a path no check above foresaw (a folder where a file goes, no permission)
        where = exc.filename2 if exc.filename2 is not None else exc.filename
        problem = f"{where}: {exc.strerror}" if where is not None and exc.strerror else str(exc)
        err.print(f"[bold red]error:[/] {escape(problem)}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]: finished work is kept; run the same command again to resume.")
        sys.exit(130)
