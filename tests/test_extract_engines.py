"""Extraction that scales out: `--shard K/N` partitions the utterances and N shard runs fill the
same store as one run; the Ray engine writes the store a local run writes, resumes and
collects failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from emofuse.corpora.base import Corpus, Utterance
from emofuse.errors import ConfigError
from emofuse.features.store import FeatureStore
from emofuse.features.store.plan import in_shard, parse_shard, shard_of

STATEMENTS = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}


def ravdess_corpus(root: Path, n: int) -> Corpus:
    """The first n RAVDESS files, one actor after another, with their statements as transcripts."""
    paths = sorted(root.glob("Actor_*/*.flac"))[::7][:n]
    utterances = [
        Utterance(id=p.stem, audio=str(p), speaker=p.stem[-2:], label=p.stem.split("-")[2],
                  original_label=p.stem.split("-")[2], transcript=STATEMENTS[p.stem.split("-")[4]])
        for p in paths
    ]
    return Corpus(utterances, name="ravdess-tiny")


@pytest.fixture
def vectors(tmp_path) -> str:
    path = tmp_path / "vectors.txt"
    path.write_text("kids 1 0 0\ndogs 0 1 0\nare 0 0 1\ntalking 1 1 0\nsitting 0 1 1\nby 1 0 1\nthe 1 1 1\n"
                    "door 2 0 0\n")
    return f"glove-file:{path}"


def entry_values(path: Path):
    """What an entry holds: its tensors and metadata, or its JSON. (Not its bytes: safetensors
    writes the metadata in a different order from one call to the next.)"""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), "np") as entry:
            return entry.metadata(), {k: entry.get_tensor(k).tolist() for k in entry.keys()}
    return json.loads(path.read_text(encoding="utf-8"))


def store_files(root: Path) -> dict[str, object]:
    """Every file of a store (entries and settings) by its path inside the store; the
    encoders' download cache and temporary files are not part of what a store holds."""
    return {
        str(p.relative_to(root)): entry_values(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).parts[0] != "cache" and not p.name.endswith(".tmp")
    }


def test_shards_partition_the_utterances_exactly():
    utterances = [Utterance(f"spk{i % 5}/utt{i}", None, "s", "x", "x") for i in range(200)]
    for n in (1, 2, 3, 7):
        parts = [in_shard(utterances, (k, n)) for k in range(1, n + 1)]
        ids = [u.id for part in parts for u in part]
        assert sorted(ids) == sorted(u.id for u in utterances)  # union is all, nothing twice
        assert len(set(ids)) == len(ids)
        if n > 1:
            assert all(part for part in parts)  # 200 ids spread over every shard
    assert in_shard(utterances, None) == utterances


def test_shards_are_stable_across_runs_and_machines():
    ids = [f"03-01-0{e}-01-01-01-{a:02d}" for e in range(1, 9) for a in range(1, 25)]
    here = [shard_of(i, 4) for i in ids]
    # another interpreter with another string-hash seed (Python's hash() would differ)
    code = ("import sys; from emofuse.features.store.plan import shard_of; "
            "print(' '.join(str(shard_of(i, 4)) for i in sys.argv[1:]))")
    other = subprocess.run([sys.executable, "-c", code, *ids], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": "12345"})
    assert [int(k) for k in other.stdout.split()] == here
    # pinned: a change here moves utterances between shards of jobs already running
    assert [shard_of(i, 4) for i in ("a", "03-01-05-01-01-01-01", "Ses01F_impro01_F000")] == [3, 3, 4]


@pytest.mark.parametrize("text", ["0/4", "5/4", "2", "a/b", "1/0", "-1/3"])
def test_a_bad_shard_is_a_config_error(text):
    with pytest.raises(ConfigError, match="K/N"):
        parse_shard(text)


def test_parse_shard_reads_k_of_n():
    assert parse_shard("2/8") == (2, 8) and parse_shard(" 1 / 1 ") == (1, 1)


def test_n_shard_runs_fill_the_same_store_as_one_run(tmp_path, ravdess_root, vectors):
    corpus = ravdess_corpus(ravdess_root, 5)
    features = ["fbank40", vectors]
    whole = FeatureStore(tmp_path / "whole")
    report = whole.extract(corpus, features, align="proportional", progress=False)
    assert report.computed == 5 and not report.failures
    sharded = FeatureStore(tmp_path / "sharded")
    counts = []
    for k in (1, 2, 3):
        part = sharded.extract(corpus, features, align="proportional", progress=False, shard=(k, 3))
        assert not part.failures and part.cached == 0
        counts.append(part.utterances)
    assert sum(counts) == 5
    assert store_files(sharded.root) == store_files(whole.root)
    assert len([f for f in store_files(whole.root) if f.endswith(".safetensors")]) == 3 * 5  # frames, vad, words


def test_cli_runs_one_shard_and_refuses_an_address_without_ray_engine(tmp_path, ravdess_root):
    from typer.testing import CliRunner

    from emofuse.cli import app

    corpus = ravdess_corpus(ravdess_root, 4)
    manifest = corpus.write(tmp_path / "m.jsonl")
    k = shard_of(corpus.utterances[0].id, 2)
    expected = len(in_shard(corpus.utterances, (k, 2)))
    args = ["extract", str(manifest), "--features", "fbank40", "--align", "none", "--out", str(tmp_path / "s"),
            "--no-progress"]
    result = CliRunner().invoke(app, [*args, "--shard", f"{k}/2"])
    assert result.exit_code == 0, result.output
    assert f"{expected} utterances (shard {k}/2 of 4)" in " ".join(result.output.split())
    stored = {p.name.rsplit("-", 1)[0] for p in (tmp_path / "s" / "frames").rglob("*.safetensors")}
    assert stored == {u.id for u in in_shard(corpus.utterances, (k, 2))}
    bad = CliRunner().invoke(app, [*args, "--address", "auto"])
    assert isinstance(bad.exception, ConfigError) and "--engine ray" in str(bad.exception)
    bad = CliRunner().invoke(app, [*args, "--engine", "spark"])
    assert isinstance(bad.exception, ConfigError) and "spark" in str(bad.exception)
    bad = CliRunner().invoke(app, [*args, "--shard", "3/2"])
    assert isinstance(bad.exception, ConfigError)


def test_ray_engine_writes_the_store_a_local_run_writes_resumes_and_collects_failures(
    tmp_path, ravdess_root, vectors,
):
    pytest.importorskip("ray", reason="the Ray engine is the optional extra: pip install 'emofuse[cluster]'")
    corpus = ravdess_corpus(ravdess_root, 4)
    junk = tmp_path / "junk.flac"
    junk.write_bytes(b"not audio")
    corpus.utterances.append(Utterance("junk", str(junk), "99", "01", "01", transcript="the door"))
    features = ["fbank40", vectors]
    local = FeatureStore(tmp_path / "local")
    local.extract(corpus, features, align="proportional", workers=1, progress=False)

    on_ray = FeatureStore(tmp_path / "ray")
    first = on_ray.extract(corpus, features, align="proportional", progress=False, shard=(1, 2))  # resumed below
    done_before = len([u for u in in_shard(corpus.utterances, (1, 2)) if u.id != "junk"])
    start = time.perf_counter()
    report = on_ray.extract(corpus, features, align="proportional", workers=2, progress=False, engine="ray")
    seconds = time.perf_counter() - start
    print(f"ray engine, local instance with 2 CPUs: {seconds:.1f} s for {report.computed} utterances")
    assert first.utterances == len(in_shard(corpus.utterances, (1, 2)))
    assert report.cached == done_before and report.computed == 5 - done_before
    assert report.failed_ids == ["junk"] and {f.stage for f in report.failures} >= {"audio"}
    assert store_files(on_ray.root) == store_files(local.root)


def test_an_unreachable_ray_cluster_is_one_clear_line(tmp_path, ravdess_root):
    pytest.importorskip("ray", reason="the Ray engine is the optional extra: pip install 'emofuse[cluster]'")
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    corpus = ravdess_corpus(ravdess_root, 1)
    with pytest.raises(ConfigError, match=f"cannot reach the Ray cluster at 127.0.0.1:{port}"):
        FeatureStore(tmp_path / "s").extract(corpus, ["fbank40"], align="none", progress=False, engine="ray",
                                             address=f"127.0.0.1:{port}")


def test_a_killed_extraction_worker_fails_its_own_chunk_alone_and_every_other_chunk_finishes(tmp_path, monkeypatch):
    import signal
    import threading

    from helpers import hanging_chunk, make_corpus

    from emofuse.features.store import extract as extract_module

    monkeypatch.setattr(extract_module, "_run_chunk", hanging_chunk)  # the chunk of u2 hangs until killed
    corpus = make_corpus(tmp_path, n=6)
    store = FeatureStore(tmp_path / "store")
    reports = []
    run = threading.Thread(target=lambda: reports.append(
        store.extract(corpus, ["fbank40"], align=None, workers=2, progress=False, chunk_size=1)))
    run.start()
    reached = store.root / "cache" / "hang.reached"
    deadline = time.monotonic() + 120
    while not (reached.exists() and reached.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    os.kill(int(reached.read_text()), signal.SIGKILL)  # as the OOM killer would
    run.join(120)
    [report] = reports
    assert report.computed == 6
    assert [(f.id, f.stage) for f in report.failures] == [("u2", "worker")]  # before: every chunk in flight failed
    assert report.failures[0].reason.startswith("utterances u2: the extraction worker died while on this job "
                                                "(killed by SIGKILL")
    done = {p.name.split("-")[0] for p in store.frames_dir("fbank40").glob("*.safetensors")}
    assert done == {"u0", "u1", "u3", "u4", "u5"}


def test_a_chunk_that_raises_fails_alone_and_every_other_chunk_finishes(tmp_path, monkeypatch):
    from helpers import make_corpus, raising_chunk

    from emofuse.features.store import extract as extract_module

    monkeypatch.setattr(extract_module, "_run_chunk", raising_chunk)
    corpus = make_corpus(tmp_path, n=4)
    store = FeatureStore(tmp_path / "store")
    report = store.extract(corpus, ["fbank40"], align=None, workers=2, progress=False, chunk_size=1)
    assert [(f.id, f.stage) for f in report.failures] == [("u2", "worker")]  # before: the run ended in a traceback
    assert report.failures[0].reason == "utterances u2: RuntimeError: CUDA out of memory (for tests)"
    done = {p.name.split("-")[0] for p in store.frames_dir("fbank40").glob("*.safetensors")}
    assert done == {"u0", "u1", "u3"}
