"""Decompression and sample-rate bombs are refused from the header, or while decoding, before
they cost memory (issue 18, item 1: the audio side)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from emofuse.features.audio import (
    TooLong, Unsupported, load_audio, load_audio_bounded, probe_audio,
)
from emofuse.serving.app import http_status
from helpers import set_flac_total_samples, silent_flac, tone

LIMIT = 120.0  # seconds: the service's default --max-seconds


@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bombs")
    hour = silent_flac(root / "hour.flac", 3600)  # 2.5 MB on disk, 1.4 GB as float32 samples
    # Ten hours: a ten-minute stream whose header says ten hours (the check reads the header;
    # encoding ten real hours would cost the test minutes).
    ten = silent_flac(root / "ten-hours.flac", 600)
    set_flac_total_samples(ten, 10 * 3600 * 48_000)
    one_hz = root / "one-hz.wav"
    sf.write(str(one_hz), np.zeros(20_000, np.int16), 1, subtype="PCM_16")  # 40 KB "lasting" 5.6 hours
    return {"hour": hour, "ten": ten, "one_hz": one_hz}


def test_the_header_is_read_without_decoding(bombs):
    header = probe_audio(bombs["hour"])
    assert (header.sample_rate, header.channels, header.duration) == (48_000, 2, 3600.0)
    assert bombs["hour"].stat().st_size < 5_000_000  # small on disk (fastest FLAC level: 2.5 MB)
    assert probe_audio(bombs["ten"]).duration == 36_000.0
    assert probe_audio(bombs["one_hz"]).sample_rate == 1


@pytest.mark.parametrize("bomb, refusal, status", [
    ("hour", TooLong, 413), ("ten", TooLong, 413), ("one_hz", Unsupported, 415),
])
def test_each_bomb_is_refused_with_its_status(bombs, bomb, refusal, status):
    with pytest.raises(refusal) as caught:
        load_audio_bounded(bombs[bomb], 16_000, max_seconds=LIMIT)
    assert http_status(caught.value) == status
    assert str(bombs[bomb]) in str(caught.value) and "\n" not in str(caught.value)


def test_refusing_the_three_bombs_costs_less_than_200_mb(bombs):
    script = """
import json, resource, sys
from emofuse.features.audio import Refused, load_audio_bounded, probe_audio
from emofuse.serving.app import http_status
paths = sys.argv[1:]
probe_audio(paths[0])  # the readers' own imports and buffers are not the bombs' cost
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
statuses = []
for path in paths:
    try:
        load_audio_bounded(path, 16000, max_seconds=120.0)
        statuses.append(200)
    except Refused as exc:
        statuses.append(http_status(exc))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"statuses": statuses, "grew_mb": (after - before) / 1024}))
"""
    result = subprocess.run([sys.executable, "-c", script, *(str(bombs[k]) for k in ("hour", "ten", "one_hz"))],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"peak RSS growth refusing the three bombs: {measured['grew_mb']:.1f} MB")
    assert measured["statuses"] == [413, 413, 415]
    assert measured["grew_mb"] < 200


def test_a_stream_whose_header_gives_no_length_is_stopped_while_decoding(tmp_path):
    # A FLAC written as a stream says "total samples unknown" (0): only decoding can tell its length.
    stream = silent_flac(tmp_path / "stream.flac", 180, sr=16_000, channels=1)
    set_flac_total_samples(stream, 0)
    assert probe_audio(stream).duration is None
    with pytest.raises(TooLong, match="more than 120 s decoded") as caught:
        load_audio_bounded(stream, 16_000, max_seconds=LIMIT)
    assert http_status(caught.value) == 413
    # The same stream within the limit is read whole.
    assert load_audio_bounded(stream, 16_000, max_seconds=200.0).size == 180 * 16_000


def test_a_wav_header_that_declares_no_samples_is_stopped_while_decoding(tmp_path):
    # Streaming WAV writers leave the data size at 0; libsndfile then sees an empty file and
    # FFmpeg reads whatever follows.
    path = tmp_path / "streamed.wav"
    sf.write(str(path), np.zeros(16_000 * 5, np.int16), 16_000, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    at = data.find(b"data")
    data[at + 4: at + 8] = (0).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    from emofuse.features.audio import decode_bounded

    header = probe_audio(path)
    assert header.reader == "pyav"
    with pytest.raises(TooLong, match="more than 2 s decoded"):
        decode_bounded(path, header, max_seconds=2.0)
    assert decode_bounded(path, header, max_seconds=10.0).size == 5 * 16_000


@pytest.mark.parametrize("rate, channels, problem", [
    (2_000, 1, "sample rate 2000 Hz"), (384_000, 1, "sample rate 384000 Hz"), (16_000, 9, "9 channels"),
])
def test_rates_and_channel_counts_out_of_bounds_are_unsupported(tmp_path, rate, channels, problem):
    path = tmp_path / "odd.wav"
    sf.write(str(path), np.zeros((rate // 10, channels), np.int16), rate, subtype="PCM_16")
    with pytest.raises(Unsupported, match=problem) as caught:
        load_audio_bounded(path, 16_000, max_seconds=LIMIT)
    assert http_status(caught.value) == 415


@pytest.mark.parametrize("suffix", [".wav", ".flac", ".ogg"])
def test_an_honest_recording_reads_as_the_unbounded_loader_reads_it(tmp_path, suffix):
    path = tmp_path / f"tone{suffix}"
    sf.write(str(path), tone(1.0, sr=44_100, channels=2), 44_100)
    bounded = load_audio_bounded(path, 16_000, max_seconds=LIMIT)
    np.testing.assert_allclose(bounded, load_audio(path, 16_000), atol=1e-6)


# ---------------------------------------------------------------- containers FFmpeg may demux an upload as


def _run_beside_a_fifo(fifo: Path, action, seconds: float = 10.0):
    """(finished, what action returned or raised): a decoder that opens the FIFO `fifo` blocks in
    open() until a writer comes, so an action still running after `seconds` opened it; the writer
    then lets it go."""
    import os
    import threading

    outcome = []

    def run():
        try:
            outcome.append(action())
        except Exception as exc:  # noqa: BLE001 - the refusal is the outcome under test
            outcome.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    finished = not worker.is_alive()
    if not finished:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # a reader waits: release it with EOF
        worker.join(30)
    return finished, outcome[0] if outcome else None


def _playlists(root: Path) -> dict[str, Path]:
    """An HLS playlist and an FFmpeg concat script, each naming `secret.fifo` beside it."""
    import os

    os.mkfifo(root / "secret.fifo")
    hls = root / "playlist.m3u8"
    hls.write_text("#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\nsecret.fifo\n#EXT-X-ENDLIST\n")
    concat = root / "script.ffconcat"
    concat.write_text("ffconcat version 1.0\nfile 'secret.fifo'\n")
    return {"hls": hls, "concat": concat}


@pytest.mark.parametrize("kind", ["hls", "concat"])
def test_a_playlist_upload_is_unsupported_and_the_file_it_names_is_never_opened(tmp_path, kind):
    playlist = _playlists(tmp_path)[kind]
    finished, refusal = _run_beside_a_fifo(tmp_path / "secret.fifo", lambda: probe_audio(playlist))
    assert finished, f"probing {playlist.name} opened the file it names"
    assert isinstance(refusal, Unsupported) and http_status(refusal) == 415
    assert str(refusal).startswith(str(playlist))
    assert f"this '{playlist.suffix}' file is not a speech container (send one of: wav," in str(refusal)
    assert "\n" not in str(refusal)


def test_a_refused_container_is_named_without_turning_ffmpeg_logging_on(tmp_path, monkeypatch):
    import av.logging

    def never(*_args):  # PyAV keeps FFmpeg's log off: turned on, its callback can deadlock (PyAV #751)
        raise AssertionError("FFmpeg logging was turned on")

    monkeypatch.setattr(av.logging, "set_level", never)
    monkeypatch.setattr(av.logging, "Capture", never)
    playlist = _playlists(tmp_path)["hls"]
    with pytest.raises(Unsupported, match="not an audio file that is decoded here: this '.m3u8' file"):
        probe_audio(playlist)


def test_the_common_speech_containers_still_read_through_ffmpeg(tmp_path):
    import av

    from emofuse.features.audio import decode_bounded

    samples = (tone(1.0) * 20_000).astype(np.int16)[None]  # (1, N) s16
    for name, fmt, codec in (("a.m4a", "mp4", "aac"), ("a.webm", "webm", "libopus"), ("a.aac", "adts", "aac")):
        rate = 48_000 if codec == "libopus" else 16_000
        with av.open(str(tmp_path / name), "w", format=fmt) as out:
            stream = out.add_stream(codec, rate=rate, layout="mono")
            frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
            frame.sample_rate = 16_000
            for converted in av.AudioResampler(format=stream.codec_context.format.name, layout="mono",
                                               rate=rate).resample(frame):
                out.mux(stream.encode(converted))
            out.mux(stream.encode(None))
        header = probe_audio(tmp_path / name)
        assert header.reader == "pyav" and header.sample_rate == rate
        assert abs(decode_bounded(tmp_path / name, header, LIMIT).size / rate - 1.0) < 0.1, name


def test_the_service_answers_a_playlist_upload_415_without_opening_what_it_names(tmp_path, monkeypatch):
    import tempfile

    from fastapi.testclient import TestClient

    from emofuse.serving.app import ServeSettings, create_app
    from helpers import registry_model_dir

    model_dir = registry_model_dir(tmp_path / "model", "B-ACO-1", acoustic="fbank40", words=None)
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    playlist = _playlists(uploads)["hls"]
    monkeypatch.setattr(tempfile, "tempdir", str(uploads))  # the server's copy lies beside secret.fifo
    with TestClient(create_app(model_dir, ServeSettings(workers=0))) as client:
        finished, response = _run_beside_a_fifo(uploads / "secret.fifo", lambda: client.post(
            "/predict", files={"file": (playlist.name, playlist.read_bytes())}))
    assert finished, "the service opened the file the playlist names"
    assert response.status_code == 415
    assert response.json()["detail"].startswith(
        "playlist.m3u8: not an audio file that is decoded here: this '.m3u8' file is not a speech container")


def test_a_decode_time_413_names_the_option_whose_limit_applied(tmp_path):
    # A FLAC streamed with "total samples unknown" goes to FFmpeg, which is not read in blocks, so
    # it is never predicted per segment: --segment-over (5 s here) is its limit, not --max-seconds;
    # its header gives no length, so only decoding finds it too long.
    from fastapi.testclient import TestClient

    from emofuse.serving.app import ServeSettings, create_app
    from helpers import registry_model_dir

    stream = silent_flac(tmp_path / "stream.flac", 8, sr=16_000, channels=1)
    set_flac_total_samples(stream, 0)
    assert probe_audio(stream).duration is None
    model_dir = registry_model_dir(tmp_path / "model", "B-ACO-1", acoustic="fbank40", words=None)
    with TestClient(create_app(model_dir, ServeSettings(workers=0, max_seconds=120, segment_over=5))) as client:
        response = client.post("/predict", files={"file": ("stream.flac", stream.read_bytes())})
    assert response.status_code == 413
    detail = response.json()["detail"]
    assert detail.startswith("stream.flac: more than 5 s decoded") and "--segment-over" in detail
    assert "--max-seconds" not in detail


# ---------------------------------------------------------------- frames sized by the header (trust round 2, item 1)

# Run in one child, the bombs' cost measured as the growth of its peak RSS: each entry point reads
# an honest ALAC recording first (imports, the model, codec tables and buffers are not a bomb's
# cost), then each entry point meets the MP4 bomb and its Matroska copy. Growth only adds up, so
# every bomb is measured against the same start. One JSON line out for each file read.
ENTRY_POINTS = r"""
import json, resource, sys
from pathlib import Path

model, honest_m4a, honest_mkv, bomb_m4a, bomb_mkv = sys.argv[1:]


def server(path):  # POST /predict: the header probe, before the upload is queued
    from fastapi import HTTPException
    from emofuse.serving.app import probe_upload
    try:
        probe_upload(path, Path(path).name, 120.0, 120.0)
        return "200"
    except HTTPException as exc:
        return f"{exc.status_code} {exc.detail}"


def worker(path):  # the job as the old header probe let it through
    from emofuse.serving.app import outcome_status
    from emofuse.serving.jobs import Job, run_job
    answer = run_job(None, Job(path, Path(path).name, None, False, "pyav", 4000, 8, 1.0, 120.0, None))
    return f"{outcome_status(answer)} {answer.get('detail')}"


def stream(path):  # WS /stream: the file's bytes as one message, no format said
    from emofuse.serving.stream import LiveSegments
    said = []
    session = LiveSegments("webm", 16000, 120.0, lambda segment, error: said.append(error), detector="energy")
    session.start()
    session.feed(Path(path).read_bytes())
    session.end()
    session.thread.join(120)
    closed = [e for e in said if isinstance(e, Exception)]
    return f"{closed[0].code} {closed[0].reason}" if closed else "1000"


def cli(path):  # emofuse predict MODEL FILE
    from emofuse.cli import main
    sys.argv = ["emofuse", "predict", model, path]
    try:
        main()
    except SystemExit as stop:
        return f"exit {stop.code}"
    return "exit 0"


runs = {"server": (server, [bomb_m4a, bomb_mkv]), "worker": (worker, [bomb_m4a, bomb_mkv]),
        "stream": (stream, [bomb_mkv]), "cli": (cli, [bomb_m4a, bomb_mkv])}


def say(entry, path, answer, grew=0.0):
    print(json.dumps({"entry": entry, "file": Path(path).name, "answer": answer, "grew_mb": grew}), flush=True)


for entry, (run, _) in runs.items():
    honest = honest_mkv if entry == "stream" else honest_m4a
    say(entry, honest, run(honest))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for entry, (run, bombs) in runs.items():
    for path in bombs:
        answer = run(path)
        say(entry, path, answer, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


@pytest.fixture(scope="module")
def alac(tmp_path_factory) -> dict[str, Path]:
    from helpers import alac_files, registry_model_dir

    root = tmp_path_factory.mktemp("alac")
    return {**alac_files(root), "model": registry_model_dir(root / "model", "B-ACO-1", "fbank40", None)}


REFUSAL = "ALAC frames of 16777216 samples x 8 channels: over the limit of 2097152 samples per decoded frame"


def test_an_alac_bomb_costs_each_entry_point_less_than_100_mb_and_is_refused_in_one_line(alac):
    import os

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run([sys.executable, "-c", ENTRY_POINTS, *(str(alac[name]) for name in (
        "model", "honest.m4a", "honest.mkv", "bomb.m4a", "bomb.mkv"))],
        capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith('{"entry"')]
    honest, bombs = lines[:4], lines[4:]
    expected = ["200", "500 honest.m4a: prediction failed (", "1000", "exit 0"]  # the worker has no model here
    assert all(line["answer"].startswith(e) for line, e in zip(honest, expected, strict=True)), honest  # decoded
    answers = {"server": "415 {name}: " + REFUSAL, "worker": "415 {name}: " + REFUSAL, "stream": "1007 " + REFUSAL,
               "cli": "exit 1"}
    for line in bombs:
        print(f"{line['entry']}: {line['file']}: peak RSS +{line['grew_mb']:.1f} MB")
    assert [(line["entry"], line["file"]) for line in bombs] == [
        ("server", "bomb.m4a"), ("server", "bomb.mkv"), ("worker", "bomb.m4a"), ("worker", "bomb.mkv"),
        ("stream", "bomb.mkv"), ("cli", "bomb.m4a"), ("cli", "bomb.mkv")]
    for line in bombs:
        assert line["answer"] == answers[line["entry"]].format(name=line["file"]), line
        assert line["grew_mb"] < 100, line
    said = [line for line in result.stderr.splitlines() if line.strip()]  # the CLI's: one line a file, no traceback
    assert said == [f"error: {alac[name]}: {REFUSAL}" for name in ("bomb.m4a", "bomb.mkv")], said


@pytest.mark.parametrize("name", ["bomb.m4a", "bomb.mkv"])
def test_an_alac_bomb_is_refused_from_its_header_by_every_decoder(alac, name):
    from emofuse.features.audio import AudioHeader, decode_bounded

    for read in (probe_audio, lambda p: decode_bounded(p, AudioHeader(4000, 8, 1.0, "pyav"), LIMIT),
                 lambda p: load_audio(p, 16_000)):
        with pytest.raises(Unsupported) as caught:
            read(alac[name])
        assert str(caught.value) == f"{alac[name]}: {REFUSAL}" and http_status(caught.value) == 415


@pytest.mark.parametrize("name", ["honest.m4a", "honest.mkv"])
def test_an_honest_alac_recording_reads_as_before(alac, name):
    bounded = load_audio_bounded(alac[name], 16_000, max_seconds=LIMIT)
    assert bounded.size == 16_000
    np.testing.assert_allclose(bounded, load_audio(alac[name], 16_000), atol=1e-6)
    np.testing.assert_allclose(bounded, tone(1.0), atol=1e-4)  # ALAC is lossless (24-bit here)


def test_the_decoder_bounds_a_frame_whose_size_no_header_declares(alac):
    # The generic guard alone (libavcodec's max_samples): the cookie's declared size is hidden,
    # as a codec whose frame size only its packets say would hide it.
    script = """
import json, resource, sys
from emofuse.features import audio
from emofuse.errors import DataError
honest, bomb = sys.argv[1:]
audio.load_audio(honest, 16000)
audio._declared_frame = lambda codec_context: (0, 0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
answers = []
for read in (audio.probe_audio, lambda p: audio.decode_bounded(p, audio.AudioHeader(4000, 8, 1.0, "pyav"), 120.0),
             lambda p: audio.load_audio(p, 16000)):
    try:
        read(bomb)
        answers.append("read")
    except DataError as exc:
        answers.append(exc.problem)
grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps({"answers": answers, "grew_mb": grew}))
"""
    result = subprocess.run([sys.executable, "-c", script, str(alac["honest.m4a"]), str(alac["bomb.m4a"])],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"peak RSS growth with the header check hidden: {measured['grew_mb']:.1f} MB")
    assert measured["grew_mb"] < 100
    probed, decoded, loaded = measured["answers"]
    assert probed == "read"  # the header alone looks fine; FFmpeg's probe decoded within the limit
    assert decoded.startswith("cannot decode audio") and loaded.startswith("cannot decode audio")
