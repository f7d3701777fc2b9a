"""`emofuse demo`: the whole toolkit on the built-in corpus, offline, in a few minutes.

prepare the demo corpus -> extract features (ComParE LLD, MiniLM, forced alignment with
Whisper as its fallback; Whisper encoder frames with `whisper_frames`) -> train B-ACO-1, B-LEX
and H-MM-4 (and B-ACO-1 on Whisper frames) with speaker-exclusive CV -> compare them -> export
the fused model -> predict one held-out recording WITHOUT its transcript, as a user would a new
recording: Whisper hears the words, H-MM-4 fuses them with the voice; explain it (the recording:
the first of `rank_showcases`'s ranking that Whisper hears as written). Each step
calls the same package functions the individual commands use; nothing here is demo-only logic
but the choice of settings (`demo/configs/*.yaml`) and of the showcase (`rank_showcases`).
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable, Mapping, Sequence

from emofuse.demo import load_demo_corpus
from emofuse.errors import ConfigError

MODELS = ("b-aco-1", "b-lex", "h-mm-4")
WHISPER_MODEL = "b-aco-1-whisper"  # the optional fourth row: B-ACO-1 on Whisper encoder frames
FUSED = "h-mm-4"
BASELINE = "b-aco-1"  # what the voice alone gives: the showcase is where fusion gains most over it
FEATURES = ("compare_lld", "minilm")
WHISPER_FRAMES = "whisper"  # data.acoustic of WHISPER_MODEL
MIN_WORDS = 3  # a showcase with fewer words has no per-word story to tell
WORDY_KINDS = ("lexical", "both")  # demo kinds whose words carry the emotion (demo/__init__.py)
HEARD_TRIES = 8  # showcase candidates Whisper may hear before the demo shows the top one as heard

Log = Callable[[str], None]


@dataclass
class Showcase:
    """A held-out recording the demo may predict, and the rule that ranked it (`rank_showcases`)."""

    id: str
    audio: str
    transcript: str
    label: str
    kind: str | None
    fold: int
    p_true: dict[str, float | None]  # model -> its cross-validated probability of the true class
    rule: str  # the rule that picked it, a fallback included


@dataclass
class DemoResult:
    out_dir: Path
    manifest: Path
    runs: dict[str, Path]
    summaries: dict[str, dict]  # model -> run summary (metrics mean/std over folds)
    model_dir: Path
    prediction: dict  # the showcase's prediction, as `emofuse predict --json` prints it, plus the truth
    explanation: Path
    seconds: dict[str, float] = field(default_factory=dict)
    models: tuple[str, ...] = MODELS  # the rows of the comparison, in order
    showcase: Showcase | None = None


def config_path(name: str) -> Path:
    return Path(str(resources.files("emofuse.demo").joinpath("configs", f"{name}.yaml")))


def demo_overrides(name: str, out_dir: Path) -> list[str]:
    """The settings that point the packaged config `name` at a demo folder (its manifest, feature
    store and run directory): what `demo_config` applies, for callers that run the config themselves."""
    return [f"name={name}", "corpus=demo", f"data.manifest={out_dir / 'manifest.jsonl'}",
            f"data.store={out_dir / 'features'}", f"run_dir={out_dir / 'runs' / name}"]


def demo_config(name: str, out_dir: Path, overrides: list[str] = ()):
    """The packaged demo config for one model, pointed at this demo's folder."""
    from emofuse.training.config import load_config

    return load_config(config_path(name), [*demo_overrides(name, out_dir), *overrides])


def word_count(transcript: str | None) -> int:
    """Words as the models read them (normalised: "20" is two words, "twenty")."""
    from emofuse.align.text import normalise_transcript

    return len(normalise_transcript(transcript or ""))


def rank_showcases(candidates: Sequence, p_fused: Mapping[str, float],
                   p_baseline: Mapping[str, float] | None) -> tuple[list, str]:
    """`candidates` (utterances of one fold's test part) best showcase first, and the rule used.

    Rule: keep the utterances with at least MIN_WORDS words in the transcript; among them
    prefer those whose demo kind is "lexical" or "both" (the words carry the emotion, so what
    Whisper hears matters); rank those by how far H-MM-4's probability of the true class
    (`p_fused`, id -> probability, from the fold's predictions.csv) exceeds B-ACO-1's
    (`p_baseline`), largest gain first. Ties: the higher H-MM-4 probability, then the smaller
    id. `p_baseline` None (B-ACO-1 split the fold differently): the gain is undefined, so
    H-MM-4's probability alone ranks. No candidate with enough words: all of them, said in the
    rule. The demo then shows the first one Whisper hears as written (`run_demo`, step 6).
    """
    scored = [u for u in candidates if u.id in p_fused and (p_baseline is None or u.id in p_baseline)]
    if not scored:
        raise ValueError("no test utterance of the fold has a prediction to pick a showcase from")
    wordy = [u for u in scored if word_count(u.transcript) >= MIN_WORDS]
    rule = f">= {MIN_WORDS} words"
    if not wordy:
        wordy, rule = scored, f"no test utterance has {MIN_WORDS} words: any length"
    preferred = [u for u in wordy if u.meta.get("kind") in WORDY_KINDS]
    if preferred:
        wordy, rule = preferred, f"{rule}, kind {' or '.join(WORDY_KINDS)}"

    def gain(u) -> float:
        return p_fused[u.id] - (p_baseline[u.id] if p_baseline is not None else 0.0)

    ranked = sorted(wordy, key=lambda u: (-gain(u), -p_fused[u.id], u.id))
    if p_baseline is None:
        return ranked, f"{rule}, highest H-MM-4 probability of the true class (no B-ACO-1 probabilities to compare)"
    return ranked, f"{rule}, largest gain of H-MM-4 over B-ACO-1 in the probability of the true class"


def true_class_probabilities(path: Path) -> dict[str, float]:
    """id -> probability of its true class, from a fold's `predictions.csv` (`training.fold`:
    columns id, speaker, label, prediction, p_<class>...)."""
    with open(path, newline="", encoding="utf-8") as f:
        return {row["id"]: float(row[f"p_{row['label']}"]) for row in csv.DictReader(f)}


def read_split(run_dir: Path, fold: int) -> dict | None:
    path = run_dir / f"fold-{fold}" / "split.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def showcase_candidates(fused_run: Path, baseline_run: Path, fold: int, corpus, log: Log = print) -> list[Showcase]:
    """The test part of fold `fold` (the exported one: never seen in its training) ranked as
    showcases (`rank_showcases`), best first. B-ACO-1's probabilities count only when its run split that fold
    exactly as H-MM-4's did (same seed and protocol give the same folds; split.json is checked,
    not assumed); otherwise this says so and H-MM-4's probability alone decides."""
    split = read_split(fused_run, fold)
    if split is None:
        raise FileNotFoundError(fused_run / f"fold-{fold}" / "split.json")
    p_fused = true_class_probabilities(fused_run / f"fold-{fold}" / "predictions.csv")
    p_baseline = None
    other = read_split(baseline_run, fold)
    same = other is not None and all(sorted(other[part]) == sorted(split[part]) for part in ("train", "val", "test"))
    if same and (baseline_run / f"fold-{fold}" / "predictions.csv").is_file():
        p_baseline = true_class_probabilities(baseline_run / f"fold-{fold}" / "predictions.csv")
    else:
        why = ("has no split.json for" if other is None else "split differently" if not same
               else "has no predictions.csv for")
        log(f"      showcase: {BASELINE.upper()}'s run {why} fold {fold} ({baseline_run}); "
            f"picking by {FUSED.upper()}'s probability alone")
    by_id = {u.id: u for u in corpus}
    tested = [by_id[i] for i in split["test"] if i in by_id]
    ranked, rule = rank_showcases(tested, p_fused, p_baseline)
    return [Showcase(u.id, u.audio, u.transcript, u.label, u.meta.get("kind"), fold,
                     {FUSED: p_fused[u.id], BASELINE: p_baseline[u.id] if p_baseline is not None else None}, rule)
            for u in ranked]


def run_demo(out_dir: str | Path = "emofuse-demo", overrides: list[str] = (), workers: int = 2,
             log: Log = print, progress: bool = True, whisper_frames: bool = True) -> DemoResult:
    """The six steps (module docstring). `whisper_frames`: also extract Whisper encoder frames
    and train B-ACO-1 on them (WHISPER_MODEL), a fourth row of the comparison."""
    from emofuse.align import make_recogniser
    from emofuse.align.text import normalise_transcript
    from emofuse.features.store import FeatureStore
    from emofuse.inference.explain import render_html, write_text_atomic
    from emofuse.training.export import export_run
    from emofuse.inference.predictor import Predictor
    from emofuse.models.modeldir import read_info
    from emofuse.training.run import quiet_lightning, run_experiment

    out_dir = Path(out_dir).resolve()
    models = MODELS + ((WHISPER_MODEL,) if whisper_frames else ())
    features = FEATURES + ((WHISPER_FRAMES,) if whisper_frames else ())
    # every override of every model's config checked before the first stage writes anything
    for name in models:
        demo_config(name, out_dir, list(overrides))
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir}: is a file; the demo writes a folder there")
    out_dir.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    quiet_lightning()

    # 1. prepare: the shipped corpus as a manifest in the demo folder
    t = time.perf_counter()
    corpus = load_demo_corpus()
    manifest = corpus.write(out_dir / "manifest.jsonl")
    speakers = sorted({u.speaker for u in corpus})
    log(f"[1/6] corpus: {len(corpus)} utterances, {len(speakers)} synthetic speakers, "
        f"labels {', '.join(sorted(set(corpus.labels)))} -> {manifest}")
    seconds["prepare"] = time.perf_counter() - t

    # 2. features, once for all models (the training step finds them cached). Training reads
    # the corpus's transcripts, force-aligned by pocketsphinx; Whisper (data.asr) only steps in
    # where that fails, and hears the showcase in step 6.
    t = time.perf_counter()
    cfg = demo_config(FUSED, out_dir, list(overrides))
    store = FeatureStore(cfg.data.store, asr=cfg.data.asr)
    report = store.extract(corpus, list(features), align=cfg.data.align, workers=workers, progress=progress)
    seconds["features"] = time.perf_counter() - t
    recogniser = make_recogniser(cfg.data.asr).name  # its name only: the model loads on first use
    sources = ", ".join(f"{n} {s}" for s, n in sorted(report.align_sources.items())) or "all cached"
    log(f"[2/6] features: {', '.join(features)} with {cfg.data.align} alignment "
        f"(pocketsphinx; recogniser {recogniser} where it fails; word times: {sources}); "
        f"{report.computed} computed, {report.cached} cached, {len(report.failures)} failed "
        f"({seconds['features']:.0f} s) -> {store.root}")
    if report.stage_seconds:
        log("      processing seconds by stage: "
            + ", ".join(f"{k} {v:.0f}" for k, v in sorted(report.stage_seconds.items())))

    # 3. train the models with speaker-exclusive CV
    runs, summaries = {}, {}
    for i, name in enumerate(models, start=1):
        t = time.perf_counter()
        cfg = demo_config(name, out_dir, list(overrides))
        frames = f", on {cfg.data.acoustic} frames" if cfg.data.acoustic != FEATURES[0] else ""
        log(f"[3/6] training {name.upper()} ({i}/{len(models)}{frames}): {cfg.protocol.k}-fold speaker-exclusive CV, "
            f"validation speakers carved from the training part")
        run = run_experiment(cfg, log=lambda line: log(f"      {line}"), progress=progress)
        runs[name] = Path(run["run_dir"])
        summaries[name] = run.get("summary", {})
        seconds[f"train {name}"] = time.perf_counter() - t

    # 4. compare
    from emofuse.training.report import compare_runs

    rows, markdown = compare_runs([runs[m] for m in models])
    write_text_atomic(out_dir / "comparison.md", markdown + "\n")
    log(f"[4/6] comparison -> {out_dir / 'comparison.md'}")

    # 5. export the fused model (best fold by validation score, never by test)
    t = time.perf_counter()
    model_dir = export_run(runs[FUSED], out_dir / "model")
    seconds["export"] = time.perf_counter() - t
    log(f"[5/6] exported {FUSED.upper()} -> {model_dir}")

    # 6. predict a recording held out from the exported fold's training WITHOUT its transcript
    # (the words are Whisper's, as for a user's new recording), and explain it
    t = time.perf_counter()
    # The showcase is about fusion, not about recognition errors: the first of the ranked
    # candidates that Whisper hears as written (the misheard ones are logged, not hidden).
    fold = int(read_info(model_dir).source["fold"])
    candidates = showcase_candidates(runs[FUSED], runs[BASELINE], fold, corpus, log)
    predictor = Predictor(model_dir)
    tried = []
    for show in candidates[:HEARD_TRIES]:
        prediction = predictor.predict_file(show.audio)
        heard = " ".join(w.text for w in prediction.words)
        if heard == " ".join(normalise_transcript(show.transcript)):
            break
        tried.append((show, prediction, heard))
        log(f"      showcase: passed over {show.id}: said {show.transcript!r}, {prediction.word_source} heard {heard!r}")
    else:
        show, prediction, heard = tried[0]
        show.rule += f"; none of the first {len(tried)} was heard as written: the first shown as heard"
    if tried and show is not tried[0][0]:
        show.rule += f"; the first heard as written ({len(tried)} passed over)"
    explanation = write_text_atomic(out_dir / "explanation.html", render_html(
        prediction, title=f"emofuse demo: {show.id} (said: {show.transcript!r}; true label: {show.label})"))
    record = prediction.to_json()
    record.update({"id": show.id, "true_label": show.label, "true_transcript": show.transcript, "heard": heard,
                   "word_source": prediction.word_source, "kind": show.kind, "fold": show.fold,
                   "cv_p_true": show.p_true, "showcase_rule": show.rule})
    seconds["predict"] = time.perf_counter() - t
    cv = ", ".join(f"{m.upper()} {p:.2f}" for m, p in show.p_true.items() if p is not None)
    gates = " ".join(f"{w.text}[{w.values['gate']:.2f}]" if "gate" in w.values else w.text for w in prediction.words)
    log(f"[6/6] showcase {show.id} ({show.kind}, test part of fold {show.fold}; {show.rule})")
    log(f"      said {show.transcript!r}; {prediction.word_source} heard {heard!r}")
    log(f"      {gates or '(no words)'} [acoustic share] -> {record['label']} "
        f"{record['probabilities'][record['label']]:.2f}, true {show.label} "
        f"(CV probability of {show.label}: {cv}); explanation -> {explanation}")

    return DemoResult(out_dir, manifest, runs, summaries, model_dir, record, explanation, seconds, models, show)
