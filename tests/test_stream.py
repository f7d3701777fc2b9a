"""Live audio over `WS /stream`: a joined RAVDESS recording streamed in 100 ms chunks gives one
message per utterance with the keys of a long-recording segment; bad input closes with a clear reason."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from emofuse.align.segments import Segment
from emofuse.inference.long import segment_result
from emofuse.inference.predictor import Prediction, WordExplanation
from emofuse.serving.app import ServeSettings, create_app
from emofuse.serving.stream import StreamLimits, segment_message
from helpers import CLASSES, joined_speech, ravdess_files, registry_model_dir

SR = 16000
PAUSES = [1.0, 0.8, 1.5, 1.2, 0.9]  # seconds of silence before each clip
CHUNK = SR // 10  # 100 ms
SEGMENT_KEYS = {"start", "end", "label", "probabilities", "words", "warnings"}
pytestmark = [pytest.mark.data, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def joined(ravdess_root):
    """Five RAVDESS utterances of statement 2, each cut to its speech span, joined with known
    pauses and a second of silence at the end (as tests/test_long.py builds it): (audio, truth)."""
    clips = ravdess_files(ravdess_root, actors=[1, 2], statement="02")[: len(PAUSES)]
    if len(clips) < len(PAUSES):
        pytest.skip(f"RAVDESS under {ravdess_root} lacks the statement-2 clips of actors 1 and 2")
    return joined_speech(clips, PAUSES)


@pytest.fixture(scope="module")
def acoustic_app(tmp_path_factory):
    return create_app(registry_model_dir(tmp_path_factory.mktemp("aco") / "model", "B-ACO-1+attn", words=None),
                      ServeSettings(workers=0, max_seconds=60.0))


@pytest.fixture(scope="module")
def client(acoustic_app):
    with TestClient(acoustic_app) as c:
        yield c


def s16le(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


def stream_chunks(ws, chunks) -> tuple[list[dict], dict]:
    """Send every chunk, then `end`; the segment messages and the final one."""
    for chunk in chunks:
        ws.send_bytes(chunk)
    ws.send_text("end")
    messages = []
    while True:
        message = ws.receive_json()
        if message.get("done"):
            return messages, message
        messages.append(message)


def closed_with(ws) -> tuple[int, str]:
    """Read until the server closes; its code and reason."""
    with pytest.raises(WebSocketDisconnect) as info:
        while True:
            ws.receive_json()
    return info.value.code, info.value.reason


def test_a_joined_recording_in_100_ms_chunks_gives_one_message_per_utterance(client, joined):
    audio, truth = joined
    pcm = s16le(audio)
    with client.websocket_connect("/stream?format=s16le") as ws:
        segments, done = stream_chunks(ws, [pcm[i:i + 2 * CHUNK] for i in range(0, len(pcm), 2 * CHUNK)])
    assert len(segments) == len(truth) and done["segments"] == len(truth)
    assert done["duration"] == pytest.approx(len(audio) / SR, abs=1e-3)
    for message, (start, end) in zip(segments, truth):
        assert set(message) == SEGMENT_KEYS
        assert message["label"] in CLASSES and sum(message["probabilities"].values()) == pytest.approx(1, abs=1e-4)
        assert message["start"] == pytest.approx(start - 0.1, abs=0.15)  # padded by 0.1 s
        assert message["end"] == pytest.approx(end + 0.1, abs=0.15)


def test_each_segment_matches_the_prediction_of_its_own_audio(client, acoustic_app, joined):
    """The message is the model's answer for exactly that stretch of audio, not a neighbour's."""
    audio, _ = joined
    with client.websocket_connect("/stream") as ws:
        ws.send_text(json.dumps({"format": "f32le"}))
        segments, _ = stream_chunks(ws, [audio[i:i + CHUNK].astype("<f4").tobytes()
                                         for i in range(0, len(audio), CHUNK)])
    predictor = acoustic_app.state.predictor
    for message in segments[:2]:
        piece = audio[int(round(message["start"] * SR)): int(round(message["end"] * SR))]
        alone = predictor.predict_audio(piece)
        assert message["label"] == alone.label
        for c in CLASSES:
            assert message["probabilities"][c] == pytest.approx(alone.probabilities[c], abs=1e-4)


def test_a_message_is_the_long_recording_segment_of_the_engines_answer_warnings_included():
    prediction = Prediction("x.wav", "sad", {"sad": 0.7, "angry": 0.3}, [WordExplanation("dogs", 0.1, 0.4, {"gate": 0.5})],
                            1.0, "asr", fallbacks=["forced->asr"], warnings=["the recording clips"])
    segment = Segment(3.0, 4.0)
    message = segment_message(segment, {"body": prediction.to_json()})
    assert message == segment_result(segment, prediction).to_json()
    assert message["warnings"] == ["forced->asr", "the recording clips"] and message["words"][0]["start"] == 3.1
    refused = segment_message(segment, {"error": "NoSpeech", "detail": "x.wav: no speech"})
    assert (refused["label"], refused["warnings"]) == (None, ["x.wav: no speech"])


def test_pcm_at_another_rate_is_resampled(client, joined):
    import soxr

    audio, truth = joined
    y = soxr.resample(audio, SR, 48000).astype("<f4")
    step = 4800
    with client.websocket_connect("/stream?format=f32le&rate=48000") as ws:
        segments, done = stream_chunks(ws, [y[i:i + step].tobytes() for i in range(0, len(y), step)])
    assert len(segments) == len(truth)
    assert done["duration"] == pytest.approx(len(audio) / SR, abs=0.01)


def test_webm_opus_from_a_media_recorder_is_decoded_as_it_arrives(client, joined):
    import io

    import av

    audio, truth = joined
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="webm") as out:
        stream = out.add_stream("libopus", rate=48000)
        stream.layout = "mono"
        y = np.interp(np.arange(0, len(audio), SR / 48000), np.arange(len(audio)), audio).astype(np.float32)
        for i in range(0, len(y), 48000):  # one-second frames, as MediaRecorder's timeslice gives
            frame = av.AudioFrame.from_ndarray(y[None, i:i + 48000], format="flt", layout="mono")
            frame.sample_rate = 48000
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    data = buffer.getvalue()
    assert data.startswith(b"\x1a\x45\xdf\xa3")
    with client.websocket_connect("/stream") as ws:  # the WebM header says the format
        segments, done = stream_chunks(ws, [data[i:i + 4000] for i in range(0, len(data), 4000)])
    assert len(segments) == len(truth) and done["segments"] == len(truth)
    for message, (start, end) in zip(segments, truth):
        assert message["start"] == pytest.approx(start - 0.1, abs=0.15)


def test_words_carry_gates_and_attention_on_the_streams_clock(tmp_path, joined):
    """H-MM-4 reads words: each segment is recognised (Whisper tiny.en, the default recogniser:
    the model directory names none) and its words are timed on the stream's clock, inside their
    segment; the message names the recogniser."""
    audio, truth = joined
    app = create_app(registry_model_dir(tmp_path / "hmm4", "H-MM-4", word_layers=1), ServeSettings(workers=0, max_seconds=60.0))
    part = audio[: int((truth[1][1] + 1.0) * SR)]  # the first two utterances
    pcm = s16le(part)
    with TestClient(app) as c, c.websocket_connect("/stream?format=s16le") as ws:
        segments, _ = stream_chunks(ws, [pcm[i:i + 2 * CHUNK] for i in range(0, len(pcm), 2 * CHUNK)])
    assert len(segments) == 2
    second = segments[1]
    assert second["words"], second["warnings"]
    assert second["recogniser"] == "whisper tiny.en"
    assert [w["text"] for w in second["words"]] == ["dogs", "are", "sitting", "by", "the", "door"]
    for word in second["words"]:
        assert {"text", "start", "end", "gate", "attention"} <= set(word)
        assert second["start"] - 0.01 <= word["start"] <= word["end"] <= second["end"] + 0.01


@pytest.mark.parametrize(("url", "payload", "code", "reason"), [
    ("/stream?format=webm", b"\x00garbage, not a WebM stream" * 200, 1007, "not WebM/Opus audio"),
    ("/stream?format=f32le", np.random.default_rng(0).bytes(16000), 1007, "f32le samples are not audio"),
    ("/stream?format=s16le", b"\x01\x02\x03", 1007, "is not whole 2-byte samples"),
    ("/stream", b"RIFF....WAVEfmt ", 1003, "say the audio format first"),
    ("/stream?format=mp3", b"", 1003, "unknown audio format 'mp3'"),
])
def test_bytes_that_are_not_audio_close_with_a_clear_reason(client, url, payload, code, reason):
    with client.websocket_connect(url) as ws:
        if payload:
            ws.send_bytes(payload)
            ws.send_text("end")
        got_code, got_reason = closed_with(ws)
    assert got_code == code and reason in got_reason


def test_a_stream_past_max_seconds_sends_what_it_heard_then_closes(acoustic_app, joined):
    audio, truth = joined
    acoustic_app.state.stream_limits = StreamLimits(max_seconds=truth[1][1] + 0.8)
    try:
        pcm = s16le(audio)
        with TestClient(acoustic_app) as c, c.websocket_connect("/stream?format=s16le") as ws:
            for i in range(0, len(pcm), 2 * CHUNK):
                ws.send_bytes(pcm[i:i + 2 * CHUNK])
            messages = []
            with pytest.raises(WebSocketDisconnect) as info:
                while True:
                    messages.append(ws.receive_json())
    finally:
        acoustic_app.state.stream_limits = None
    assert info.value.code == 1008 and "passed" in info.value.reason and "--max-seconds" in info.value.reason
    assert len(messages) == 2 and all(set(m) == SEGMENT_KEYS for m in messages)


def test_a_chunk_too_big_or_a_silent_client_is_closed(acoustic_app):
    acoustic_app.state.stream_limits = StreamLimits(max_chunk_bytes=1000, idle_seconds=0.5)
    try:
        with TestClient(acoustic_app) as c:
            with c.websocket_connect("/stream?format=s16le") as ws:
                ws.send_bytes(b"\x00" * 1002)
                code, reason = closed_with(ws)
            assert code == 1009 and "1002 bytes" in reason and "limit is 1000" in reason
            with c.websocket_connect("/stream?format=s16le") as ws:
                ws.send_bytes(b"\x00" * 800)
                code, reason = closed_with(ws)
            assert code == 1001 and "idle for 0.5 s" in reason
    finally:
        acoustic_app.state.stream_limits = None


def test_streams_past_the_connection_limit_are_turned_away_and_a_closed_one_frees_its_place(acoustic_app):
    acoustic_app.state.stream_limits = StreamLimits(max_connections=1, idle_seconds=5)
    try:
        with TestClient(acoustic_app) as c:
            with c.websocket_connect("/stream?format=s16le") as first:
                first.send_bytes(b"\x00" * 3200)
                with c.websocket_connect("/stream?format=s16le") as second:
                    code, reason = closed_with(second)
                assert code == 1013 and "1 live streams are open" in reason
                first.send_text("end")
                closed_with(first)
            with c.websocket_connect("/stream?format=s16le") as third:  # the place is free again
                third.send_bytes(b"\x00" * 3200)
                third.send_text("end")
                assert closed_with(third)[0] == 1000
    finally:
        acoustic_app.state.stream_limits = None
