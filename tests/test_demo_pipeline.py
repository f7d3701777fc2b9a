"""`emofuse demo` end to end: the fused model must earn its keep.

The demo corpus is built so that the words alone cannot resolve the ambiguous phrases and
the voice alone cannot resolve the lexical sentences; H-MM-4 must beat chance and both
unimodal baselines (mean test UA over speaker-exclusive folds), and the demo must leave a
usable model directory and explanation behind.
"""

from __future__ import annotations

import json

import pytest

from emofuse.demo.pipeline import MODELS, run_demo
from emofuse.models.modeldir import read_info

pytestmark = pytest.mark.slow

# The demo's own (already small) settings, with the progress bar off.
SETTINGS = ["trainer.progress=false"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return run_demo(out, SETTINGS, workers=2, log=lambda line: None, progress=False)


def test_demo_fused_model_beats_chance_and_both_unimodal_models(demo):
    ua = {name: demo.summaries[name]["ua"]["mean"] for name in MODELS}
    assert ua["h-mm-4"] > 0.25 + 0.1, ua
    assert ua["h-mm-4"] > ua["b-aco-1"], ua
    assert ua["h-mm-4"] > ua["b-lex"], ua


def test_demo_leaves_a_model_directory_an_explanation_and_a_comparison(demo):
    assert (demo.model_dir / "model.safetensors").is_file()
    assert read_info(demo.model_dir).name == "H-MM-4"
    page = demo.explanation.read_text()
    assert demo.prediction["label"] in page
    assert set(demo.prediction["probabilities"]) == {"angry", "happy", "neutral", "sad"}
    assert demo.prediction["words"] and all("gate" in w for w in demo.prediction["words"])
    table = (demo.out_dir / "comparison.md").read_text()
    assert all(m.upper() in table for m in MODELS)


def test_demo_prediction_is_on_a_recording_held_out_from_the_exported_fold(demo):
    fold = read_info(demo.model_dir).source["fold"]
    split = json.loads((demo.runs["h-mm-4"] / f"fold-{fold}" / "split.json").read_text())
    assert demo.prediction["id"] in split["test"]
    assert demo.prediction["id"] not in split["train"] + split["val"]
