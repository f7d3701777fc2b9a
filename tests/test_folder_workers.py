"""Folder prediction on worker processes (issue 18, items 3 and 5): the workers build the same
Predictor as one process would (--force-transcript, --no-verify), die within seconds of a
`kill -9` of `emofuse predict`, and the results files always carry `warnings`."""

from __future__ import annotations

import csv
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import (
    end_all,
    CLASSES,
    STATEMENT_1,
    alive,
    children,
    ravdess_files,
    registry_model_dir,
)
from typer.testing import CliRunner

from emofuse.errors import EmofuseError
from emofuse.inference.folder import predict_jobs, write_results
from emofuse.inference.predictor import Prediction, PredictionError

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

UNRELATED = "the quarterly revenue forecast exceeded every analyst expectation considerably"


@pytest.fixture(scope="module")
def words_model(tmp_path_factory) -> Path:
    return registry_model_dir(tmp_path_factory.mktemp("hmm4") / "model", "H-MM-4", "fbank40", "glove50")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds processes through Linux /proc")
def test_folder_workers_die_within_seconds_of_a_killed_predict(words_model, ravdess_root, tmp_path):
    recordings = tmp_path / "recordings"
    recordings.mkdir()
    for path in sorted(ravdess_root.glob("Actor_*/*.flac"))[:120]:  # speech recognition for each: minutes
        (recordings / path.name).symlink_to(path)
    command = [sys.executable, "-c", "from emofuse.cli import main; main()", "predict", str(words_model),
               str(recordings), "--workers", "2", "--batch-size", "1", "--json", "--out", str(tmp_path / "r.csv")]
    parent = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    workers: dict[int, str] = {}
    try:
        deadline, answered = time.monotonic() + 240, False
        while time.monotonic() < deadline and not (answered and len(workers) == 2):
            assert parent.poll() is None, f"predict ended before it could be killed: {parent.stderr.read()!r}"
            workers = {pid: cmd for pid, cmd in children(parent.pid).items() if "spawn_main" in cmd}
            if not answered and select.select([parent.stdout], [], [], 0.2)[0]:
                answered = parent.stdout.readline().startswith(b"{")  # a worker has loaded and predicted
        assert answered and len(workers) == 2, "the workers never started predicting"

        parent.send_signal(signal.SIGKILL)
        parent.wait()
        killed = time.monotonic()
        while any(alive(pid) for pid in workers) and time.monotonic() - killed < 5:
            time.sleep(0.1)
        assert not [pid for pid in workers if alive(pid)], "folder workers outlived their parent by 5 s"
        assert not (tmp_path / "r.csv").exists()  # the run was really cut short
    finally:
        end_all(parent, workers)


def test_a_folder_worker_honours_force_transcript(words_model, ravdess_root, tmp_path):
    from emofuse.cli import app

    recordings = tmp_path / "recordings"
    recordings.mkdir()
    files = ravdess_files(ravdess_root, actors=[1])[:2]  # both say STATEMENT_1
    for path in files:
        (recordings / path.name).symlink_to(path)
    transcripts = tmp_path / "transcripts.csv"
    transcripts.write_text("file,transcript\n" + "".join(f"{p.name},{UNRELATED}\n" for p in files))
    command = ["predict", str(words_model), str(recordings), "--transcripts", str(transcripts), "--workers", "2",
               "--batch-size", "1"]

    refused = CliRunner().invoke(app, [*command, "--out", str(tmp_path / "refused.csv")])
    assert refused.exit_code == 1  # every file failed
    rows = list(csv.DictReader((tmp_path / "refused.csv").open()))
    assert len(rows) == 2 and all("could not be aligned" in r["error"] for r in rows)

    forced = CliRunner().invoke(app, [*command, "--force-transcript", "--out", str(tmp_path / "forced.jsonl")])
    assert forced.exit_code == 0, forced.output
    assert "ignored" not in forced.stderr
    records = [json.loads(line) for line in (tmp_path / "forced.jsonl").read_text().splitlines()]
    assert [r["label"] in CLASSES for r in records] == [True, True]
    assert all(any("could not be aligned" in w for w in r["warnings"]) for r in records)
    assert all([w["text"] for w in r["words"]][:2] == ["the", "quarterly"] for r in records)


def test_folder_workers_verify_the_weights_unless_told_not_to(ravdess_root, tmp_path):
    from safetensors.torch import load_file, save_file

    model = registry_model_dir(tmp_path / "model", "B-ACO-1", "fbank40", None)
    weights = model / "model.safetensors"
    save_file({k: v * 0.5 for k, v in load_file(str(weights)).items()}, str(weights))
    jobs = [(str(p), None) for p in ravdess_files(ravdess_root, actors=[1, 2])[:2]]

    with pytest.raises(EmofuseError, match="weights do not match model.json"):  # the run's error, not a file's
        list(predict_jobs(model, jobs, workers=2, batch_size=1))
    results = dict(predict_jobs(model, jobs, workers=2, batch_size=1, verify=False))
    assert sorted(results) == [0, 1] and all(isinstance(r, Prediction) for r in results.values())


def _prediction(file: str, warnings: list[str]) -> Prediction:
    return Prediction(file=file, label="sad", probabilities={c: 0.25 for c in CLASSES}, words=[], duration=1.0,
                      align_source="forced", transcript=STATEMENT_1, warnings=warnings)


def test_results_files_always_hold_warnings(tmp_path):
    results = [_prediction("a.wav", ["clipped audio: 2.0 % of samples at full scale", "second"]),
               _prediction("b.wav", []), PredictionError("c.wav", "cannot decode audio")]

    rows = list(csv.DictReader(write_results(tmp_path / "r.csv", results, CLASSES).open()))
    assert [r["warnings"] for r in rows] == ["clipped audio: 2.0 % of samples at full scale; second", "", ""]
    assert rows[2]["error"] == "cannot decode audio"

    records = [json.loads(line) for line in write_results(tmp_path / "r.jsonl", results, CLASSES).read_text().splitlines()]
    assert [r["warnings"] for r in records] == [["clipped audio: 2.0 % of samples at full scale", "second"], [], []]
    assert records[2]["error"] == "cannot decode audio"


def test_a_killed_folder_worker_fails_its_own_batch_alone_and_every_other_batch_finishes(tmp_path, monkeypatch):
    import threading

    import soundfile as sf
    from helpers import hanging_batch, tone

    from emofuse.inference import folder

    monkeypatch.setattr(folder, "_predict_batch", hanging_batch)  # the batch of hangs.wav hangs until killed
    model = registry_model_dir(tmp_path / "model", "B-ACO-1", "fbank40", None)
    names = ["a.wav", "b.wav", "hangs.wav", "c.wav", "d.wav"]
    for name in names:
        sf.write(str(tmp_path / name), tone(1.0), 16000)
    results = {}
    run = threading.Thread(target=lambda: results.update(
        predict_jobs(model, [(str(tmp_path / n), None) for n in names], workers=2, batch_size=1)))
    run.start()
    reached = tmp_path / "hangs.reached"
    deadline = time.monotonic() + 120
    while not (reached.exists() and reached.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    os.kill(int(reached.read_text()), signal.SIGKILL)  # as the OOM killer would
    run.join(180)
    assert sorted(results) == [0, 1, 2, 3, 4]
    failed = {i: r for i, r in results.items() if isinstance(r, PredictionError)}
    assert list(failed) == [2]  # before: every batch in flight failed with the broken pool
    assert failed[2].error.startswith("worker failed: hangs.wav: the prediction worker died while on this job "
                                      "(killed by SIGKILL")
    assert all(isinstance(results[i], Prediction) for i in (0, 1, 3, 4))
