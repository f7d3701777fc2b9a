"""`emofuse prepare` (corpus folder -> manifest) and `emofuse data summary` (manifest -> counts)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from emofuse.corpora import CORPUS_KINDS, LABEL_SETS, Corpus, load_corpus
from emofuse.cli.options import in_range, output_file
from emofuse.errors import ConfigError


def _consoles() -> tuple[Console, Console]:
    """Made per command, so they see the current stdout and terminal width (COLUMNS)."""
    return Console(highlight=False), Console(stderr=True, highlight=False)


data_app = typer.Typer(help="Inspect prepared manifests.", no_args_is_help=True)

_CORPUS_HELP = "Corpus kind: " + "; ".join(f"{k} ({v.summary}, default labels {v.default_label_set or 'as given'})" for k, v in CORPUS_KINDS.items())


def prepare(
    corpus: str = typer.Argument(..., help=_CORPUS_HELP, metavar="CORPUS"),
    path: Path = typer.Argument(..., help="The corpus folder as released (or, for 'manifest', the CSV/JSONL file; for 'meld' also one CSV)."),
    out_file: Path = typer.Option(..., "--out", "-o", help="Manifest to write (JSONL, written atomically)."),
    label_set: Optional[str] = typer.Option(
        None, "--label-set", "-l",
        help=f"Map labels through a set: a built-in name ({', '.join(LABEL_SETS)}), a YAML file {{name, classes, map}}, "
             "or auto (the classes found, sorted; those with fewer than --min-class-count utterances dropped). "
             "Default: the corpus's own.",
    ),
    min_class_count: int = typer.Option(10, "--min-class-count", help="With --label-set auto: drop rarer classes."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first unusable file instead of skipping it."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="mosei only: the label CSV or .csd file, if not in the corpus folder."),
    ties: Optional[str] = typer.Option(None, "--ties", help="mosei only: 'drop' (default) or 'priority' for segments whose strongest emotions tie."),
) -> None:
    """Scan a corpus into a JSONL manifest of utterances; list every skipped file and why."""
    out, err = _consoles()
    output_file("--out", out_file)
    in_range("--min-class-count", min_class_count, 0)
    options = {}
    if labels is not None or ties is not None:
        if corpus != "mosei":
            raise ConfigError("--labels and --ties apply to the mosei corpus only")
        if labels is not None:
            options["labels"] = labels
        if ties is not None:
            if ties not in ("drop", "priority"):
                raise ConfigError(f"--ties must be 'drop' or 'priority', not {ties!r}")
            options["ties"] = ties
    if corpus not in CORPUS_KINDS:
        raise ConfigError(f"unknown corpus {corpus!r}; known: {', '.join(CORPUS_KINDS)}")

    with Progress(
        TextColumn(f"scanning {escape(corpus)}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=err, transient=True, disable=not err.is_terminal,
    ) as bar:
        task = bar.add_task("scan", total=None)
        result = load_corpus(
            corpus, path, None if label_set == "auto" else label_set, strict=strict,
            progress=lambda done, total: bar.update(task, completed=done, total=total), **options,
        )
    if label_set == "auto":
        result = _auto_labels(result, min_class_count, err)
    written = result.write(out_file)

    n_speakers, n_labels = len(set(result.speakers)), len(set(result.labels))
    out.print(
        f"[bold green]wrote[/] {escape(str(written))}: {len(result)} utterances, "
        f"{n_speakers} speakers, {n_labels} labels"
        + (f" (label set {result.label_set})" if result.label_set else " (labels as given)")
    )
    with_text = sum(u.transcript is not None for u in result)
    with_words = sum(u.words is not None for u in result)
    with_audio = sum(u.audio is not None for u in result)
    out.print(f"  audio: {with_audio}, transcripts: {with_text}, word timings: {with_words}")
    if result.excluded:
        detail = ", ".join(f"{k} {v}" for k, v in result.excluded.most_common())
        out.print(f"  excluded by the label rule: {sum(result.excluded.values())} ({escape(detail)})")
    if result.skipped:
        table = Table(title=f"{len(result.skipped)} skipped", title_justify="left", show_lines=False)
        table.add_column("file", overflow="fold")
        table.add_column("reason", overflow="fold")
        for item in result.skipped:
            table.add_row(escape(item.path), escape(item.reason))
        out.print(table)
    else:
        out.print("  skipped: none")


def _auto_labels(result, min_count: int, err: Console):
    """The corpus with the auto label set applied: rare classes dropped, and said so."""
    from emofuse.corpora.common import PreparedCorpus
    from emofuse.corpora.labels import auto_label_set

    auto = auto_label_set([u.label for u in result], min_count, source=result.name)
    if auto.dropped:
        err.print(f"label set auto: dropped {len(auto.dropped)} class(es) with fewer than {min_count} utterances: "
                  + escape(", ".join(f"{c} ({n})" for c, n in auto.dropped.items())))
    kept = []
    for u in result:
        label = auto.label_set.mapping[str(u.label).strip().lower()]
        if label is not None:
            u.label = label
            kept.append(u)
    excluded = Counter(result.excluded) + Counter(auto.dropped)
    return PreparedCorpus(kept, name=result.name, skipped=result.skipped, excluded=excluded, label_set="auto")


def _count_table(title: str, counts: Counter, total: int, rows: int, by_label: dict | None = None) -> Table:
    """One row per name; `by_label` adds the per-label breakdown as compact text (fits 80 columns)."""
    table = Table(title=title, title_justify="left")
    table.add_column(title.split()[0].rstrip("s"), no_wrap=True)
    table.add_column("utterances", justify="right")
    table.add_column("share", justify="right")
    if by_label:
        table.add_column("by label", overflow="fold")
    # Labels, and any list cut at `rows`, by count (largest first); short lists by name.
    by_count = title.startswith("label") or len(counts) > rows
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if by_count else sorted(counts.items())
    for name, count in ordered[:rows]:
        extra = [", ".join(f"{k}:{v}" for k, v in sorted(by_label[name].items()))] if by_label else []
        table.add_row(escape(str(name)), str(count), f"{100 * count / total:.1f}%", *extra)
    if len(ordered) > rows:
        table.caption = f"... and {len(ordered) - rows} more (--max-rows)"
    return table


@data_app.command("summary")
def summary(
    manifest: Path = typer.Argument(..., help="A manifest written by `emofuse prepare`."),
    max_rows: int = typer.Option(40, "--max-rows", help="Rows shown per table (speakers can be many)."),
) -> None:
    """Counts per label, speaker, session (and official split) of a manifest."""
    out, _ = _consoles()
    in_range("--max-rows", max_rows, 1)
    corpus = Corpus.read(manifest)
    total = len(corpus)
    labels = sorted(set(corpus.labels))
    speakers = Counter(corpus.speakers)
    sessions = Counter(u.session for u in corpus if u.session is not None)
    splits = Counter(u.meta.get("split") for u in corpus if u.meta.get("split"))
    by_speaker: dict = {}
    for u in corpus:
        by_speaker.setdefault(u.speaker, Counter())[u.label] += 1
    by_session: dict = {}
    for u in corpus:
        if u.session is not None:
            by_session.setdefault(u.session, Counter())[u.label] += 1

    out.print(_count_table("labels", Counter(corpus.labels), total, len(labels)))
    out.print(_count_table("speakers", speakers, total, max_rows, by_speaker))
    if sessions:
        out.print(_count_table("sessions", sessions, total, max_rows, by_session))
    if splits:
        out.print(_count_table("splits (official)", splits, total, max_rows))
    durations = [u.meta.get("duration") for u in corpus]
    seconds = sum(d for d in durations if isinstance(d, (int, float)))
    line = f"{total} utterances, {len(speakers)} speakers, {len(labels)} labels"
    if sessions:
        line += f", {len(sessions)} sessions"
    if seconds >= 360:
        line += f", {seconds / 3600:.2f} h of audio"
    elif seconds > 0:
        line += f", {seconds:.1f} s of audio"
    out.print(f"[bold]{escape(corpus.name)}[/]: {line}")


def register(app: typer.Typer) -> None:
    app.command("prepare")(prepare)
    app.add_typer(data_app, name="data")
