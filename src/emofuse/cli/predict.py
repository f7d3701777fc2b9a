"""`emofuse predict`: a thin wrapper over emofuse.inference (it never imports emofuse.training)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from emofuse.cli.options import asr_option, consoles, in_range, output_file
from emofuse.errors import ConfigError, EmofuseError


DAY = 86400.0  # seconds


def _word_table(prediction) -> Table | None:
    if not prediction.words:
        return None
    keys = [k for k in ("gate", "attention", "acoustic_gate", "semantic_gate", "attention_center")
            if any(k in w.values for w in prediction.words)]
    titles = {"gate": "acoustic share", "attention": "attention", "acoustic_gate": "E^a", "semantic_gate": "E^s",
              "attention_center": "attends at (s)"}
    table = Table(show_edge=False, pad_edge=False, box=None)
    table.add_column("word")
    table.add_column("span (s)", justify="right")
    for k in keys:
        table.add_column(titles[k], justify="right")
    for w in prediction.words:
        cells = [f"{w.values[k]:.3f}" if k in w.values else "-" for k in keys]
        table.add_row(escape(w.text), w.span(), *cells, style=None if w.used else "dim")
    return table


def _print_prediction(out: Console, prediction) -> None:
    probs = "  ".join(f"{c} {100 * p:.1f}%" for c, p in prediction.probabilities.items())
    out.print(f"[bold]{escape(prediction.file)}[/]: [bold green]{escape(prediction.label)}[/]  ({probs})")
    detail = f"  {prediction.duration:.2f} s"
    if prediction.words:
        detail += f", word times: {prediction.word_source}"
    if prediction.fallbacks:
        detail += f" ({escape('; '.join(prediction.fallbacks))})"
    if prediction.truncated:
        detail += ", truncated to the model's max_frames/max_words"
    out.print(detail)
    for warning in prediction.warnings:
        out.print(f"  [yellow]warning[/]: {escape(warning)}")
    table = _word_table(prediction)
    if table is not None:
        out.print(table)


def _print_long(out: Console, result) -> None:
    summary = result.summary()
    shares = "  ".join(f"{c} {100 * v:.1f}%" for c, v in summary["share"].items())
    out.print(f"[bold]{escape(result.file)}[/]: {result.duration:.1f} s, {len(result.segments)} segments "
              f"({escape(result.detector)}); share of speech time: {shares}")
    table = Table(show_edge=False, pad_edge=False, box=None)
    for name in ("start (s)", "end (s)", "emotion", "p", "words"):
        table.add_column(name, justify="right" if name in ("start (s)", "end (s)", "p") else "left")
    for s in result.segments:
        words = " ".join(w.text for w in s.words) or "; ".join(s.warnings)
        table.add_row(f"{s.start:.2f}", f"{s.end:.2f}", escape(s.label or "-"), f"{s.confidence:.2f}",
                      escape(words[:80]))
    out.print(table)


def _predict_long_files(model_dir, jobs, settings, detector, cues, threads, as_json, out, err, single,
                        **predictor_options):
    """Files predicted per segment (`inference.long`), one Predictor, a progress bar per file."""
    from emofuse.errors import DataError
    from emofuse.inference.long import predict_long
    from emofuse.inference.predictor import PredictionError, Predictor

    predictor = Predictor(model_dir, threads=threads, **predictor_options)
    results = []
    for path, text in jobs:
        if text and cues is None:
            err.print(f"[yellow]note[/]: {escape(path)} is predicted per segment; its transcript is not used "
                      "(give a timed one with --segments-from)")
        with Progress(TextColumn(escape(Path(path).name)), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                      TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=err, transient=True,
                      disable=not err.is_terminal) as bar:
            task = bar.add_task("segments", total=1.0)
            try:
                result = predict_long(predictor, path, settings, detector, cues,
                                      progress=lambda done, total: bar.update(task, completed=done / max(total, 1e-9)))
            except DataError as exc:
                if single:
                    raise
                err.print(f"[red]failed[/] {escape(str(exc))}")
                results.append(PredictionError(path, str(exc)))
                if as_json:
                    print(json.dumps(results[-1].to_json(), ensure_ascii=False), flush=True)
                continue
        results.append(result)
        if as_json:
            print(json.dumps(result.to_json(), ensure_ascii=False), flush=True)
        else:
            _print_long(out, result)
    return results


def _read_headers(files) -> tuple[dict, list]:
    """Each file's header, read without decoding (`features.audio.probe_audio`), and
    PredictionErrors for the files whose header the service would refuse (a sample rate outside
    4-192 kHz, too many channels: `features.audio.check_audio_header`): a 1 Hz WAV's 20000
    samples would otherwise be decoded and segmented as 20000 s of audio. Unreadable files are
    left to the decoder, which says why."""
    from emofuse.errors import Undecodable
    from emofuse.features.audio import Refused, check_audio_header, probe_audio
    from emofuse.inference.predictor import PredictionError

    headers, refused = {}, []
    for path in files:
        try:
            header = probe_audio(path)
            check_audio_header(path, header, None)
        except Undecodable:  # unreadable: the decoder says why, in the file's place
            pass
        except Refused as exc:
            refused.append(PredictionError(str(path), str(exc)))
        except EmofuseError:
            pass
        else:
            headers[path] = header
    return headers, refused


def _predict_texts(model_dir, info, source, text, texts_file, as_json, results_out, html_out, png_out,
                   predictor_options, out, err) -> None:
    """--text / --texts: sentences through a text-only model (`inference.text`), no audio."""
    from emofuse.inference.explain import render_html, write_text_atomic
    from emofuse.inference.folder import write_results
    from emofuse.inference.predictor import PredictionError, Predictor
    from emofuse.inference.text import predict_texts, read_texts, require_text_only

    if source is not None:
        raise ConfigError(f"--text/--texts predict text without audio; leave out {source}")
    if text is not None and texts_file is not None:
        raise ConfigError("give --text or --texts, not both")
    if png_out is not None:
        raise ConfigError("--png draws a recording's waveform; for text use --html")
    if results_out is not None and results_out.suffix.lower() not in (".csv", ".jsonl"):
        raise ConfigError(f"--out {results_out}: the results file must end in .csv or .jsonl")
    require_text_only(info)  # an acoustic model says it needs audio before anything loads
    jobs = [("<text>", text)] if text is not None else read_texts(texts_file)
    results = predict_texts(Predictor(model_dir, **predictor_options), jobs, strict=text is not None)
    for result in results:
        if as_json:
            print(json.dumps(result.to_json(), ensure_ascii=False), flush=True)
        elif isinstance(result, PredictionError):
            err.print(f"[red]failed[/] {escape(result.error)}")
        else:
            _print_prediction(out, result)
    done = [r for r in results if not isinstance(r, PredictionError)]
    if results_out is not None:
        write_results(results_out, results, info.classes)
        err.print(f"[bold green]wrote[/] {escape(str(results_out))}")
    if html_out is not None and done:
        write_text_atomic(html_out, render_html(done, title=f"emofuse: {texts_file.name if texts_file else 'text'}"))
        err.print(f"[bold green]wrote[/] {escape(str(html_out))}")
    if texts_file is not None:
        err.print(f"{len(done)} of {len(results)} text(s) predicted"
                  + (f", {len(results) - len(done)} failed" if len(done) < len(results) else ""))
    if not done:
        sys.exit(1)


def predict(
    model_dir: Path = typer.Argument(..., help="Model directory (from `emofuse export` or `emofuse train`)."),
    source: Optional[Path] = typer.Argument(None, help="An audio file, or a folder searched recursively for audio files (none with --text/--texts)."),
    transcript: Optional[str] = typer.Option(None, "--transcript", "-t", help="What is said in the file (one file only): forced alignment instead of ASR."),
    transcripts: Optional[Path] = typer.Option(None, "--transcripts", help="CSV with columns file,transcript for a folder."),
    text: Optional[str] = typer.Option(None, "--text", help="Predict this text, without audio (text-only models such as B-LEX)."),
    texts_file: Optional[Path] = typer.Option(None, "--texts", help="Predict each text of this file, without audio: one utterance per line, or a CSV with a transcript column (text-only models)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per file (keys label, probabilities, words, ...)."),
    html_out: Optional[Path] = typer.Option(None, "--html", help="Write the explanation page (self-contained HTML) here."),
    png_out: Optional[Path] = typer.Option(None, "--png", help="Write the explanation as a PNG here (one file only)."),
    results_out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write all results as .csv or .jsonl."),
    workers: int = typer.Option(1, "--workers", "-w", min=1, help="Worker processes for a folder (each loads the model once)."),
    batch_size: int = typer.Option(4, "--batch-size", min=1, help="Files per model batch."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Torch threads for the model (default 1: the alignment and openSMILE stages run single-threaded beside it; 2 can help long recordings on an idle machine). Folder workers use 1 each unless it is given."),
    one_speaker: bool = typer.Option(False, "--one-speaker", help="The folder holds one speaker's recordings, spanning their emotions: normalise them with their joint statistics, as a model trained with data.normalise=speaker or protocol.backend=speaker-lr was cross-validated (file by file, stand-ins are used: the recording's own frame statistics, the training speakers' mean for the back-end, which also needs 5 or more recordings). One process."),
    segments: bool = typer.Option(False, "--segments", help="Predict every file per speech segment, whatever its length."),
    segment_over: float = typer.Option(30.0, "--segment-over", min=0.0, help="Files longer than this many seconds are predicted per speech segment."),
    segments_from: Optional[Path] = typer.Option(None, "--segments-from", help="Timed transcript (CSV start,end,text / .srt / .vtt) giving the segments of one file and their texts (forced-aligned within each)."),
    vad: str = typer.Option("auto", "--vad", help="Speech detector for segments: auto (Silero VAD, else energy), silero, energy."),
    min_pause: float = typer.Option(0.5, "--min-pause", help="Segments: a pause this long (s) ends a segment."),
    min_segment: float = typer.Option(0.25, "--min-segment", help="Segments: speech shorter than this (s) is dropped."),
    max_segment: float = typer.Option(10.0, "--max-segment", help="Segments: longer ones (s) are cut at their deepest pause."),
    pad: float = typer.Option(0.1, "--pad", help="Segments: seconds added before and after each (at most --min-pause / 2)."),
    force_transcript: bool = typer.Option(False, "--force-transcript", help="Use a transcript even when it cannot be aligned to the audio (by default that is refused: it is likely not what was said), with the recogniser's word times and a warning."),
    trust_transcript: bool = typer.Option(False, "--trust-transcript", help="Do not compare a given transcript with what the recogniser hears (by default a word error rate over 0.34 against it adds a warning; the check costs one more decode)."),
    no_speech_check: bool = typer.Option(False, "--no-speech-check", help="Predict recordings in which the Silero voice activity detector finds no speech (by default they are refused: any answer would be a guess on noise)."),
    no_verify: bool = typer.Option(False, "--no-verify", help="Do not check the weights against the sha256 in model.json (for weights edited on purpose)."),
    asr: Optional[str] = typer.Option(None, "--asr", help="Recogniser for files without a transcript: whisper (the packaged tiny.en), whisper:PATH (a CTranslate2 Whisper folder), sphinx (pocketsphinx). Default: the one the model was trained with, else whisper."),
    language: Optional[str] = typer.Option(None, "--language", help="Whisper's language (default: English for .en models)."),
) -> None:
    """Predict the emotion of recordings and show, per word, its time span, acoustic share and attention.
    Long files (over --segment-over, or all with --segments) are predicted per speech segment."""
    from emofuse.inference.explain import render_html, render_png, write_text_atomic
    from emofuse.inference.folder import find_audio, predict_jobs, read_transcripts, write_results
    from emofuse.inference.predictor import PredictionError
    from emofuse.models.modeldir import read_info

    out, err = consoles()
    for option, path in (("--html", html_out), ("--png", png_out), ("--out", results_out)):
        output_file(option, path)
    # seconds: a day at most, so sample counts stay integers (1e308 s overflowed in the segmenter)
    for option, value in (("--min-pause", min_pause), ("--min-segment", min_segment), ("--pad", pad),
                          ("--segment-over", segment_over)):
        in_range(option, value, 0, DAY)
    in_range("--max-segment", max_segment, 0, DAY, above=True)
    info = read_info(model_dir)  # a wrong folder fails before any file is read
    predictor_options = {**({"verify": False} if no_verify else {}),  # only what differs from the defaults
                         **({"force_transcript": True} if force_transcript else {}),
                         **({"check_transcript": False} if trust_transcript else {}),
                         **({"speech_check": False} if no_speech_check else {}),
                         **asr_option(asr, language, info)}
    if text is not None or texts_file is not None:
        _predict_texts(model_dir, info, source, text, texts_file, as_json, results_out, html_out, png_out,
                       {**predictor_options, "threads": threads}, out, err)
        return
    if source is None:
        raise ConfigError("give an audio file or folder to predict, or --text / --texts for a text-only model")
    files = find_audio(source)
    single = source.is_file()
    headers, refused = _read_headers(files)  # what the service refuses, before anything is decoded
    if single and refused:
        err.print(f"[bold red]error:[/] {escape(refused[0].error)}", soft_wrap=True)
        sys.exit(1)
    for result in refused:
        err.print(f"[red]failed[/] {escape(result.error)}")
        if as_json:
            print(json.dumps(result.to_json(), ensure_ascii=False), flush=True)
    files = [f for f in files if str(f) not in {r.file for r in refused}]
    if transcript is not None and not single:
        raise ConfigError("--transcript is for one file; for a folder give --transcripts CSV (columns file,transcript)")
    if transcript is not None and transcripts is not None:
        raise ConfigError("give --transcript or --transcripts, not both")
    if png_out is not None and not single:
        raise ConfigError("--png draws one file; for a folder use --html (one page, a section per file)")
    if one_speaker and single:
        raise ConfigError("--one-speaker predicts a folder of one speaker's recordings together; give a folder")
    if results_out is not None and results_out.suffix.lower() not in (".csv", ".jsonl"):
        raise ConfigError(f"--out {results_out}: the results file must end in .csv or .jsonl")
    texts: dict[Path, str] = {}
    if transcripts is not None:
        texts, unmatched = read_transcripts(transcripts, files, source if source.is_dir() else None)
        if unmatched:
            err.print(f"[yellow]note[/]: {len(unmatched)} transcript row(s) match no audio file "
                      f"(first: {escape(unmatched[0])})")
    if transcript is not None:
        texts = {files[0]: transcript}
    if info.acoustic_only and texts:
        err.print(f"[yellow]note[/]: model {escape(info.name)} is acoustic-only; transcripts are not used")
    jobs = [(str(f), texts.get(f)) for f in files]
    from emofuse.align.segments import DETECTORS, SegmentSettings
    from emofuse.inference.long import is_long

    if vad not in DETECTORS:
        raise ConfigError(f"--vad {vad}: unknown speech detector; known: {', '.join(DETECTORS)}")

    segment_settings = SegmentSettings(min_pause=min_pause, min_segment=min_segment, max_segment=max_segment, pad=pad)
    cues = None
    if segments_from is not None:
        from emofuse.align.subtitles import read_timed_transcript

        if not single:
            raise ConfigError("--segments-from gives the segments of one file; give a file, not a folder")
        cues = read_timed_transcript(segments_from)
    long_jobs = [j for j in jobs if segments or cues is not None
                 or (Path(j[0]) in headers and is_long(headers[Path(j[0])], segment_over))]
    if long_jobs and (one_speaker or png_out is not None):
        raise ConfigError("--one-speaker and --png take whole recordings; files predicted per segment "
                          f"(over --segment-over {segment_over:g} s, or --segments) use --html for their timeline")
    jobs = [j for j in jobs if j not in long_jobs]

    results: list = [None] * len(jobs)
    failed = 0
    with Progress(TextColumn("predict"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("eta"), TimeRemainingColumn(), console=err, transient=True,
                  disable=single or not err.is_terminal) as bar:
        task = bar.add_task("predict", total=len(jobs))
        if one_speaker:  # two passes over the folder (statistics, then the model): one process
            from emofuse.inference.predictor import Predictor
            from emofuse.models.refitted_output import MIN_UTTERANCES

            if (info.backend or {}).get("kind") == "speaker-lr" and len(jobs) < MIN_UTTERANCES:
                err.print(f"[yellow]note[/]: {len(jobs)} recording(s): the back-end takes a speaker's statistics "
                          f"from {MIN_UTTERANCES} or more; the training speakers' mean statistics stand in")

            outcome = enumerate(Predictor(model_dir, threads=threads, **predictor_options)
                                .predict_speaker(jobs, batch_size=batch_size))
        else:
            outcome = predict_jobs(model_dir, jobs, workers=min(workers, len(jobs)), batch_size=batch_size,
                                   threads=threads, **predictor_options) if jobs else iter(())
        for index, result in outcome:
            results[index] = result
            bar.advance(task)
            if isinstance(result, PredictionError):
                failed += 1
                if single:  # the input, not the command, is at fault: exit 1, one line
                    err.print(f"[bold red]error:[/] {escape(result.error)}", soft_wrap=True)
                    sys.exit(1)
                err.print(f"[red]failed[/] {escape(result.error)}")
                if as_json:
                    print(json.dumps(result.to_json(), ensure_ascii=False), flush=True)
                continue
            if as_json:
                print(json.dumps(result.to_json(), ensure_ascii=False), flush=True)
            else:
                _print_prediction(out, result)
    results += refused
    failed += len(refused)
    long_results = _predict_long_files(model_dir, long_jobs, segment_settings, vad, cues, threads, as_json,
                                       out, err, single, **predictor_options) if long_jobs else []
    failed += sum(isinstance(r, PredictionError) for r in long_results)
    segmented = [r for r in long_results if not isinstance(r, PredictionError)]
    done = [r for r in results if r is not None and not isinstance(r, PredictionError)]
    if results_out is not None:
        if long_jobs:  # one row per segment; a file predicted whole is one segment
            from emofuse.inference.long import write_segment_results

            write_segment_results(results_out, long_results + results, info.classes)
        else:
            write_results(results_out, results, info.classes)
        err.print(f"[bold green]wrote[/] {escape(str(results_out))}")
    if html_out is not None and segmented:
        from emofuse.inference.timeline import render_timeline_html

        write_text_atomic(html_out, render_timeline_html(segmented, done, title=f"emofuse: {source.name}"))
        err.print(f"[bold green]wrote[/] {escape(str(html_out))}")
    elif html_out is not None and done:
        write_text_atomic(html_out, render_html(done, title=f"emofuse: {source.name}"))
        err.print(f"[bold green]wrote[/] {escape(str(html_out))}")
    if png_out is not None and done:
        render_png(done[0], png_out)
        err.print(f"[bold green]wrote[/] {escape(str(png_out))}")
    if not single:
        err.print(f"{len(done) + len(segmented)} of {len(jobs) + len(long_jobs) + len(refused)} file(s) predicted"
                  + (f", {failed} failed" if failed else ""))
    if failed and not done and not segmented:
        sys.exit(1)


def register(app: typer.Typer) -> None:
    app.command("predict")(predict)
