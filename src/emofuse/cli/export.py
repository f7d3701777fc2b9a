"""`emofuse export`: a thin wrapper over emofuse.training.export and emofuse.inference.onnx_export
(imported when the command runs, so `emofuse predict` and `emofuse serve` never load training)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from emofuse.cli.options import consoles
from emofuse.errors import ConfigError


def export(
    source: Path = typer.Argument(..., help="A run directory of `emofuse train` (with --out), or a model directory (with --onnx)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Model directory to write from a run directory."),
    fold: Optional[int] = typer.Option(None, "--fold", help="Export this fold instead of the best one by validation UA."),
    onnx_out: Optional[Path] = typer.Option(None, "--onnx", help="Also write the model as ONNX (acoustic-only models), checked with onnxruntime."),
) -> None:
    """Package a trained run as a model directory, and/or a model directory as ONNX."""
    from emofuse.models.modeldir import is_model_dir, read_info
    from emofuse.training.export import export_run

    out, _ = consoles()
    if out_dir is None and onnx_out is None:
        raise ConfigError("nothing to do: give --out MODEL_DIR (from a run directory) and/or --onnx OUT.onnx")
    model_dir = source
    if out_dir is not None:
        if is_model_dir(source):
            raise ConfigError(f"{source} is already a model directory; --out packages a run directory")
        model_dir = export_run(source, out_dir, fold=fold)
        info = read_info(model_dir)
        val = info.metrics.get("val_ua")
        test = (info.metrics.get("test") or {}).get("ua")
        out.print(f"[bold green]wrote[/] {escape(str(model_dir))}: {escape(info.name)}, fold {info.metrics.get('fold')}"
                  + (f", validation UA {val:.3f}" if val is not None else "")
                  + (f", test UA {test:.3f}" if test is not None else "")
                  + (" (acoustic only: no transcript needed)" if info.acoustic_only else ""))
    elif fold is not None:
        raise ConfigError("--fold applies when exporting a run directory with --out")
    if onnx_out is not None:
        from emofuse.inference.onnx_export import export_onnx

        report = export_onnx(model_dir, onnx_out)
        diffs = ", ".join(f"{k} {v:.1e}" for k, v in report["max_abs_diff"].items())
        out.print(f"[bold green]wrote[/] {escape(str(onnx_out))}: input features (1, frames, "
                  f"{report['inputs']['features'][2]}) of {report['feature']}; onnxruntime vs PyTorch max |diff|: {diffs}")


def register(app: typer.Typer) -> None:
    app.command("export")(export)
