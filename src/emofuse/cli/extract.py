"""`emofuse extract MANIFEST --features ... --align ... --workers N --out DIR`: fill the feature store,
on this machine's processes, on a Ray cluster (`--engine ray --address ADDR`) or one part of
many (`--shard K/N`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from emofuse.align import MODES, with_language
from emofuse.corpora.base import Corpus
from emofuse.cli.options import output_folder
from emofuse.errors import ConfigError



def _check_hf_folders(names: list[str]) -> None:
    """Each hf: encoder folder holds safetensors weights, before any utterance is read."""
    from emofuse.features.hf import is_hf, parse_spec, resolve_folder
    from emofuse.features.hf_weights import require_safetensors

    for name in names:
        if is_hf(name):
            require_safetensors(resolve_folder(parse_spec(name).path))


def extract(
    manifest: Path = typer.Argument(..., help="JSONL manifest of utterances (from `emofuse prepare`)."),
    features: str = typer.Option(
        "compare_lld,fbank40,minilm", "--features", "-f",
        help="Comma-separated: frame features compare_lld, fbank40, spectrogram8k, waveform, whisper "
             "(Whisper's encoder; whisper:PATH, #pad=30); word features minilm, glove50, glove-file:PATH; "
             "hf:PATH (a local speech or text encoder).",
    ),
    asr: str = typer.Option(
        "whisper", "--asr",
        help="Recogniser for --align asr (and auto without a transcript): whisper (the packaged tiny.en), "
             "whisper:PATH (a CTranslate2 Whisper folder), sphinx (pocketsphinx).",
    ),
    language: Optional[str] = typer.Option(
        None, "--language", help="Whisper's language (default: English for .en models)."),
    align: str = typer.Option(
        "auto", "--align", "-a",
        help="Word times: auto (corpus, else forced, else asr), corpus, forced, asr, proportional, "
             "text (words without times), none.",
    ),
    workers: int = typer.Option(
        1, "--workers", "-j", min=0,
        help="Worker processes (0 or 1: in this process); with --engine ray and no --address, the local CPUs.",
    ),
    engine: str = typer.Option(
        "process", "--engine", help="process (this machine) or ray (a Ray cluster; pip install 'emofuse[cluster]')."
    ),
    address: Optional[str] = typer.Option(
        None, "--address", help="Ray cluster to run on (auto, HOST:6379, ray://HOST:10001); the store must be shared."
    ),
    shard: Optional[str] = typer.Option(
        None, "--shard",
        help="K/N: only part K of N of the utterances (a stable hash of each id), e.g. one SLURM array task each.",
    ),
    device: str = typer.Option(
        "auto", "--device",
        help="Where hf: encoders run: auto (the GPU when torch sees one), cpu, cuda or cuda:N. "
             "The built-in features always run on the CPU.",
    ),
    out_dir: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Feature store folder (default: features/<corpus name>, where training looks)."
    ),
    force: bool = typer.Option(False, "--force", help="Recompute entries that are already stored."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar with ETA."),
) -> None:
    """Extract features for every utterance of a manifest; finished entries are kept and
    skipped on the next run. Exit code 1 only when every utterance to process failed."""
    from emofuse.features.store import FeatureStore, split_features
    from emofuse.features.store.plan import parse_shard

    out, err = Console(highlight=False, soft_wrap=True), Console(stderr=True, highlight=False, soft_wrap=True)  # a summary line stays one line in a log
    if align not in MODES:
        raise ConfigError(f"unknown --align {align!r}; known: {', '.join(MODES)}")
    names = [f.strip() for f in features.split(",") if f.strip()]
    if not names:
        raise ConfigError("--features is empty")
    split_features(names)
    _check_hf_folders(names)
    part = parse_shard(shard) if shard is not None else None
    corpus = Corpus.read(manifest)
    out_dir = out_dir if out_dir is not None else Path("features") / corpus.name
    output_folder("--out", out_dir)
    store = FeatureStore(out_dir, asr=with_language(asr, language))
    report = store.extract(corpus, names, align=align, workers=workers, progress=progress and err.is_terminal,
                           engine=engine, address=address, shard=part, device=device)

    out.print(
        f"[bold green]store[/] {escape(str(out_dir))}: {report.utterances} utterances"
        + (f" (shard {part[0]}/{part[1]} of {len(corpus)})" if part else "") + ", "
        f"{report.cached} already complete, {report.computed} processed, {len(report.failed_ids)} with failures"
    )
    if report.audio_seconds > 0:
        rtf = report.rtf()
        out.print(
            f"  {report.audio_seconds / 60:.1f} min of audio in {report.wall_seconds:.1f} s on {report.workers} "
            f"worker(s): real-time factor {rtf['total_wall']:.4f} (CPU {rtf['total_cpu']:.4f}); "
            f"peak memory {report.peak_rss_mb:.0f} MB"
        )
        stages = Table(title="processing seconds per second of audio, by stage", title_justify="left")
        stages.add_column("stage")
        stages.add_column("RTF", justify="right")
        for stage, value in rtf.items():
            if not stage.startswith("total"):
                stages.add_row(stage, f"{value:.4f}")
        out.print(stages)
    if report.align_sources:
        out.print("  word times from: " + ", ".join(f"{k} {v}" for k, v in report.align_sources.most_common()))
    if report.fallbacks:
        out.print("  fallbacks: " + ", ".join(f"{k} {v}" for k, v in report.fallbacks.most_common()))
    if report.pronunciations:
        out.print("  out-of-dictionary words pronounced by: "
                  + ", ".join(f"{k} {v}" for k, v in report.pronunciations.most_common()))
    if report.words:
        out.print(f"  words: {report.words}, without a vector (zeros): {report.oov_words}")
    if report.failures:
        table = Table(title=f"{len(report.failures)} failures", title_justify="left")
        for column in ("utterance", "stage", "reason"):
            table.add_column(column, overflow="fold")
        for failure in report.failures:
            table.add_row(escape(failure.id), failure.stage, escape(failure.reason))
        err.print(table)
    if report.failed_ids and len(report.failed_ids) >= report.utterances - report.cached:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("extract")(extract)
