"""A broken command line is one line and a non-zero exit, never a traceback, and it is refused
before anything is written or decoded ("Trust, second round", item B): an output path of the
wrong kind, a number out of range (checked by us or by an option's `min=`), a missing
argument, an unknown option, a recording whose header the service refuses too, an unknown demo
key, an hf: folder holding only a pickle checkpoint."""

from __future__ import annotations

import json
import sys
import wave
from pathlib import Path

import pytest
import soundfile as sf

from helpers import make_corpus, registry_model_dir, tone

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, Path]:
    """A model directory, a manifest, a clip, a 1 Hz WAV, a folder, a plain file, and a model whose
    hf: encoder folder holds only pytorch_model.bin."""
    root = tmp_path_factory.mktemp("refusals")
    corpus_dir = root / "corpus"
    corpus_dir.mkdir()
    make_corpus(corpus_dir).write(root / "manifest.jsonl")
    sf.write(root / "clip.wav", tone(1.0), 16000)
    with wave.open(str(root / "one-hz.wav"), "wb") as w:  # 20000 samples said to be 1 Hz: "20000 s"
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(1)
        w.writeframes(b"\0\0" * 20000)
    (root / "folder").mkdir()
    (root / "file").write_text("not a folder\n")
    model = registry_model_dir(root / "model", "B-ACO-1", "fbank40", None)
    pickled = root / "hf-pickle"
    pickled.mkdir()
    (pickled / "config.json").write_text(json.dumps({"model_type": "wav2vec2"}))
    (pickled / "pytorch_model.bin").write_bytes(b"a pickle: never loaded")
    hf_model = registry_model_dir(root / "hf-model", "B-ACO-1", "fbank40", None)
    record = json.loads((hf_model / "model.json").read_text())
    record["encoders"] = {"acoustic": {"spec": f"hf:{pickled}", "folder": str(pickled), "weights_sha256": "0" * 64}}
    (hf_model / "model.json").write_text(json.dumps(record))
    return {"root": root, "model": model, "hf_model": hf_model, "pickled": pickled}


def _cases(p: dict[str, Path]) -> dict[str, tuple[list[str], str]]:
    """name: (arguments, what the one line must say)."""
    root, model = p["root"], str(p["model"])
    manifest, clip, folder, file = (str(root / n) for n in ("manifest.jsonl", "clip.wav", "folder", "file"))
    config = str(ROOT / "configs" / "ravdess4" / "b-aco-1.yaml")
    return {
        "prepare --out DIR": (["prepare", "manifest", manifest, "--out", folder], "--out"),
        "prepare --min-class-count -3": (["prepare", "manifest", manifest, "--out", str(root / "m.jsonl"),
                                          "--label-set", "auto", "--min-class-count", "-3"], "--min-class-count -3"),
        "data summary --max-rows -5": (["data", "summary", manifest, "--max-rows", "-5"], "--max-rows -5"),
        "extract --out FILE": (["extract", manifest, "--features", "fbank40", "--align", "none", "--out", file],
                               "is a file"),
        "extract hf: pickle folder": (["extract", manifest, "--features", f"hf:{p['pickled']}", "--align", "none",
                                       "--out", str(root / "store")], "pytorch_model.bin"),
        "train run_dir=FILE": (["train", config, f"run_dir={file}"], "run_dir="),
        "predict --max-segment 1e308": ([*("predict", model, clip), "--max-segment", "1e308", "--segments"],
                                        "--max-segment"),
        "predict --png DIR": (["predict", model, clip, "--png", folder], "--png"),
        "predict a 1 Hz WAV": (["predict", model, str(root / "one-hz.wav")], "sample rate 1 Hz"),
        "predict a model with a pickle hf folder": (["predict", str(p["hf_model"]), clip], "safetensors only"),
        "serve --port -1": (["serve", model, "--port", "-1"], "--port -1"),
        "serve --port 99999": (["serve", model, "--port", "99999"], "--port 99999"),
        "serve --max-upload-mb -5": (["serve", model, "--max-upload-mb", "-5"], "--max-upload-mb -5"),
        "demo --out FILE": (["demo", "--out", file], "is a file"),
        "demo bogus.key=1": (["demo", "--out", str(root / "demo"), "bogus.key=1"], "'bogus'"),
        # usage errors click finds (typer's min=): one line too, never its boxed panel
        "predict --workers 0": (["predict", model, clip, "--workers", "0"], "'--workers'"),
        "predict --batch-size 0": (["predict", model, clip, "--batch-size", "0"], "'--batch-size'"),
        "predict --threads two": (["predict", model, clip, "--threads", "two"], "'--threads'"),
        "demo --workers 0": (["demo", "--out", str(root / "demo"), "--workers", "0"], "'--workers'"),
        "extract --workers -1": (["extract", manifest, "--features", "fbank40", "--align", "none",
                                  "--out", str(root / "store"), "--workers", "-1"], "'--workers'"),
        "predict without a model": (["predict"], "Missing argument"),
        "predict --bogus": (["predict", model, clip, "--bogus"], "--bogus"),
    }


CASES = list(_cases({k: Path("/x") for k in ("root", "model", "hf_model", "pickled")}))


@pytest.mark.parametrize("case", CASES)
def test_a_broken_invocation_is_one_line_and_a_non_zero_exit(paths, case, monkeypatch, capsys):
    from emofuse.cli import main

    args, says = _cases(paths)[case]
    monkeypatch.chdir(paths["root"])  # anything written by mistake lands here, not in the tree
    monkeypatch.setattr(sys, "argv", ["emofuse", *args])
    with pytest.raises(SystemExit) as stop:
        main()
    out, err = capsys.readouterr()
    lines = [line for line in (out + err).splitlines() if line.strip()]
    assert stop.value.code not in (0, None), lines
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    assert says in lines[0] and not set("│╭╰─") & set(lines[0]), lines


def test_the_refusals_write_nothing(paths, monkeypatch, capsys):
    """The demo's prepare stage no longer runs before its keys are checked; nothing else is left."""
    from emofuse.cli import main

    monkeypatch.chdir(paths["root"])
    for case, (args, _) in _cases(paths).items():
        monkeypatch.setattr(sys, "argv", ["emofuse", *args])
        with pytest.raises(SystemExit):
            main()
    capsys.readouterr()
    root = paths["root"]
    assert not (root / "demo").exists() and not (root / "m.jsonl").exists() and not (root / "store").exists()
    assert list((root / "folder").iterdir()) == [] and (root / "file").read_text() == "not a folder\n"


def test_a_usage_error_is_one_line_through_the_test_runner_too(paths):
    """Click's test runner calls the command group's `main` as the console script does."""
    from typer.testing import CliRunner

    from emofuse.cli import app

    result = CliRunner().invoke(app, ["predict", str(paths["model"]), "--workers", "0"])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "'--workers'" in result.stderr and "╭" not in result.stderr
