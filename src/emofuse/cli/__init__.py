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

try:  # typer 0.2x carries its own copy of click; earlier versions use click itself
    from typer._click import exceptions as usage
except ImportError:
    from click import exceptions as usage

from emofuse.errors import EmofuseError

# Nothing may reach a model hub at run time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

err = Console(stderr=True)


class OneLineErrors(typer.core.TyperGroup):
    """The command group, whose usage errors (a value out of an option's `min=`/`max=` range, a
    missing argument, an unknown option) are one line naming the option and the problem, exit 2,
    as every other refusal of the CLI: click's own answer is a usage line, a hint and a boxed
    panel. Run from `main` and from click's test runner alike (both call `main` here)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode: bool = True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except usage.NoArgsIsHelpError as exc:  # the help is printed already
            sys.exit(exc.exit_code)
        except usage.ClickException as exc:
            ctx = getattr(exc, "ctx", None)
            where = f"{ctx.command_path}: " if ctx is not None else ""
            hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
            problem = " ".join(exc.format_message().split())  # one line, whatever click wrapped
            err.print(f"[bold red]error:[/] {escape(where + problem + hint)}", highlight=False, soft_wrap=True)
            sys.exit(exc.exit_code)
        except typer.Abort:
            err.print("[yellow]aborted[/]")
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)  # an int: a typer.Exit's code; else the command's result


app = typer.Typer(
    name="emofuse",
    cls=OneLineErrors,
    help="Speech emotion recognition from how words are said and what is said.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

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
