"""`emofuse demo`: the whole toolkit on the built-in corpus, offline, in a few minutes.

prepare the demo corpus -> extract features (ComParE LLD, MiniLM, forced alignment) ->
train B-ACO-1, B-LEX and H-MM-4 with speaker-exclusive CV -> compare them -> export the
fused model -> predict one held-out recording and explain it. Each step calls the same
package functions the individual commands use; nothing here is demo-only logic but the
choice of settings (`demo/configs/*.yaml`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable

from emofuse.demo import load_demo_corpus
from emofuse.errors import ConfigError

MODELS = ("b-aco-1", "b-lex", "h-mm-4")
FUSED = "h-mm-4"
FEATURES = ("compare_lld", "minilm")

Log = Callable[[str], None]


@dataclass
class DemoResult:
    out_dir: Path
    manifest: Path
    runs: dict[str, Path]
    summaries: dict[str, dict]  # model -> run summary (metrics mean/std over folds)
    model_dir: Path
    prediction: dict  # the held-out recording's prediction, as `emofuse predict --json` prints it
    explanation: Path
    seconds: dict[str, float] = field(default_factory=dict)


def config_path(name: str) -> Path:
    return Path(str(resources.files("emofuse.demo").joinpath("configs", f"{name}.yaml")))


def demo_config(name: str, out_dir: Path, overrides: list[str] = ()):
    """The packaged demo config for one model, pointed at this demo's folder."""
    from emofuse.training.config import load_config

    return load_config(config_path(name), [
        f"name={name}", "corpus=demo",
        f"data.manifest={out_dir / 'manifest.jsonl'}",
        f"data.store={out_dir / 'features'}",
        f"run_dir={out_dir / 'runs' / name}",
        *overrides,
    ])


def held_out_recording(run_dir: Path, model_dir: Path, corpus) -> tuple[str, str | None, str, str]:
    """An utterance from the test part of the exported fold: never seen in its training.

    Prefers one whose words are ambiguous (kind "acoustic"), where fusion has to listen.
    Returns (audio path, transcript, true label, utterance id).
    """
    from emofuse.models.modeldir import read_info

    fold = read_info(model_dir).source["fold"]
    split_file = run_dir / f"fold-{fold}" / "split.json"
    test_ids = json.loads(split_file.read_text(encoding="utf-8"))["test"]
    by_id = {u.id: u for u in corpus}
    tested = [by_id[i] for i in test_ids if i in by_id]
    tested.sort(key=lambda u: (u.meta.get("kind") != "acoustic", u.id))
    utt = tested[0]
    return utt.audio, utt.transcript, utt.label, utt.id


def run_demo(out_dir: str | Path = "emofuse-demo", overrides: list[str] = (), workers: int = 2,
             log: Log = print, progress: bool = True) -> DemoResult:
    from emofuse.features.store import FeatureStore
    from emofuse.inference.explain import render_html, write_text_atomic
    from emofuse.training.export import export_run
    from emofuse.inference.predictor import Predictor
    from emofuse.training.loop import quiet_lightning, run_experiment

    out_dir = Path(out_dir).resolve()
    # every override of every model's config checked before the first stage writes anything
    for name in MODELS:
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

    # 2. features, once for all models (the training step finds them cached)
    t = time.perf_counter()
    cfg = demo_config(FUSED, out_dir, list(overrides))
    store = FeatureStore(cfg.data.store)
    report = store.extract(corpus, list(FEATURES), align=cfg.data.align, workers=workers, progress=progress)
    seconds["features"] = time.perf_counter() - t
    log(f"[2/6] features: {', '.join(FEATURES)} with {cfg.data.align} alignment; "
        f"{report.computed} computed, {report.cached} cached, {len(report.failures)} failed "
        f"({seconds['features']:.0f} s) -> {store.root}")

    # 3. train the three models with speaker-exclusive CV
    runs, summaries = {}, {}
    for i, name in enumerate(MODELS, start=1):
        t = time.perf_counter()
        cfg = demo_config(name, out_dir, list(overrides))
        log(f"[3/6] training {cfg.model_name} ({i}/{len(MODELS)}): {cfg.protocol.k}-fold speaker-exclusive CV, "
            f"validation speakers carved from the training part")
        run = run_experiment(cfg, log=lambda line: log(f"      {line}"), progress=progress)
        runs[name] = Path(run["run_dir"])
        summaries[name] = run.get("summary", {})
        seconds[f"train {name}"] = time.perf_counter() - t

    # 4. compare
    from emofuse.training.report import compare_runs

    rows, markdown = compare_runs([runs[m] for m in MODELS])
    write_text_atomic(out_dir / "comparison.md", markdown + "\n")
    log(f"[4/6] comparison -> {out_dir / 'comparison.md'}")

    # 5. export the fused model (best fold by validation score, never by test)
    t = time.perf_counter()
    model_dir = export_run(runs[FUSED], out_dir / "model")
    seconds["export"] = time.perf_counter() - t
    log(f"[5/6] exported {FUSED.upper()} -> {model_dir}")

    # 6. predict a recording held out from the exported fold's training, and explain it
    t = time.perf_counter()
    audio, transcript, truth, utt_id = held_out_recording(runs[FUSED], model_dir, corpus)
    prediction = Predictor(model_dir).predict_file(audio, transcript=transcript)
    explanation = write_text_atomic(out_dir / "explanation.html",
                                    render_html(prediction, title=f"emofuse demo: {utt_id} (true label: {truth})"))
    record = prediction.to_json()
    record.update({"id": utt_id, "true_label": truth})
    seconds["predict"] = time.perf_counter() - t
    log(f"[6/6] predicted {utt_id} ({transcript!r}, true {truth}) -> {record['label']}; explanation -> {explanation}")

    return DemoResult(out_dir, manifest, runs, summaries, model_dir, record, explanation, seconds)
