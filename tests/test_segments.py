"""Speech segments of long recordings: boundaries, streaming, cutting, padding, flat memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile as sf
import soxr

from emofuse.align import segments as seg_module
from emofuse.align.segments import SegmentSettings, Segmenter, segment_file
from emofuse.errors import ConfigError, DataError, EmofuseError
from helpers import joined_speech

SR = 16000
# Neutral, normal intensity, statement 2 ("Dogs are sitting by the door"), repetition 1.
RAVDESS_CLIPS = [f"Actor_{a:02d}/03-01-01-01-02-01-{a:02d}.flac" for a in range(1, 9)]
PAUSES = [1.0, 0.8, 1.5, 1.2, 0.9, 1.1, 0.7, 1.3]  # seconds of silence before each clip


def run(segmenter: Segmenter, audio: np.ndarray, chunk: int | None = None):
    chunks = [audio] if chunk is None else [audio[i:i + chunk] for i in range(0, len(audio), chunk)]
    out = [s for c in chunks for s in segmenter.push(c)]
    return out + segmenter.flush()


def bursts(spans: list[tuple[float, float]], seconds: float, level: float = 0.3) -> np.ndarray:
    """A harmonic tone with a little noise inside each (start, end) span, faint noise elsewhere."""
    rng = np.random.default_rng(0)
    y = 1e-4 * rng.standard_normal(int(seconds * SR))
    t = np.arange(len(y)) / SR
    for start, end in spans:
        inside = (t >= start) & (t < end)
        y[inside] += level * (np.sin(2 * np.pi * 180 * t[inside]) + 0.3 * np.sin(2 * np.pi * 360 * t[inside]))
    return y.astype(np.float32)


@pytest.fixture(scope="module")
def joined(ravdess_root):
    """Eight real utterances, each trimmed to its speech span, joined with known pauses.

    The truth: each clip is cut to the span `align.vad.energy_speech_mask` finds in it alone
    (25 ms energy within 35 dB of the clip's loudest frame, above -70 dBFS), so in the joined
    recording speech starts and ends exactly at the joins. The statement starts with a voiced
    /d/ on which both detectors agree; Silero keeps its probability up for 2-3 frames after
    the last sound, so its ends run 10-80 ms late, inside the 100 ms asked for.
    """
    clips = [ravdess_root / clip for clip in RAVDESS_CLIPS]
    for path in clips:
        if not path.is_file():
            pytest.skip(f"{path} missing")
    return joined_speech(clips, PAUSES)


@pytest.mark.data
@pytest.mark.parametrize("detector", ["silero", "energy"])
def test_joined_utterances_are_found_within_100_ms(joined, detector):
    audio, truth = joined
    segmenter = Segmenter(SegmentSettings(pad=0.0), detector)
    found = run(segmenter, audio)
    assert segmenter.detector_name == detector and segmenter.fallbacks == []
    assert len(found) == len(truth)
    for segment, (start, end) in zip(found, truth):
        assert abs(segment.start - start) <= 0.1, (segment, start)
        assert abs(segment.end - end) <= 0.1, (segment, end)


@pytest.mark.data
@pytest.mark.parametrize("detector", ["silero", "energy"])
def test_streaming_in_100_ms_chunks_gives_the_whole_recording_segments(joined, detector):
    audio, _ = joined
    whole = run(Segmenter(detector=detector), audio)
    streamed = run(Segmenter(detector=detector), audio, chunk=SR // 10)
    odd = run(Segmenter(detector=detector), audio, chunk=777)
    assert len(whole) == len(RAVDESS_CLIPS)
    assert streamed == whole and odd == whole


def test_segments_are_given_out_as_soon_as_a_pause_closes_them():
    audio = bursts([(1.0, 2.0), (4.0, 5.0)], 7.0)
    segmenter = Segmenter(SegmentSettings(min_pause=0.5, pad=0.1), "energy")
    first = [s for i in range(0, int(3.0 * SR), 1600) for s in segmenter.push(audio[i:i + 1600])]
    assert len(first) == 1 and first[0].end == pytest.approx(2.1, abs=0.03)
    rest = segmenter.push(audio[int(3.0 * SR):]) + segmenter.flush()
    assert [round(s.start, 2) for s in rest] == [pytest.approx(3.9, abs=0.03)]


def test_a_long_segment_is_cut_at_its_deepest_pause():
    # 13 s of speech with a shallow dip (-12 dB) at 4 s and a real 0.2 s silence at 7 s:
    # both are shorter than min_pause, so only the 10 s limit can cut, and it must cut at 7 s.
    audio = bursts([(1.0, 7.0), (7.2, 14.0)], 15.0)
    t = np.arange(len(audio)) / SR
    audio[(t >= 4.0) & (t < 4.2)] *= 0.25
    settings = SegmentSettings(min_pause=0.5, max_segment=10.0, pad=0.1)
    found = run(Segmenter(settings, "energy"), audio)
    assert len(found) == 2
    assert 7.0 <= found[0].end <= 7.2 and found[1].start == found[0].end
    assert found[0].start == pytest.approx(0.9, abs=0.03) and found[1].end == pytest.approx(14.1, abs=0.03)


def test_min_max_and_pad_settings_are_honoured():
    spans = [(1.0, 1.1), (2.0, 3.0), (4.0, 29.0), (30.0, 30.5)]  # a click, speech, a monologue, speech
    audio = bursts(spans, 31.0)
    settings = SegmentSettings(min_pause=0.4, min_segment=0.25, max_segment=6.0, pad=0.15)
    found = run(Segmenter(settings, "energy"), audio)
    assert all(s.duration <= settings.max_segment + 1e-9 for s in found)
    assert all(a.end <= b.start for a, b in zip(found, found[1:]))
    assert not any(s.start < 1.2 for s in found), "a 0.1 s click is shorter than min_segment"
    assert found[0].start == pytest.approx(2.0 - 0.15, abs=0.03) and found[0].end == pytest.approx(3.0 + 0.15, abs=0.03)
    monologue = [s for s in found if 3.5 < s.start < 29.0 or 3.5 < s.end < 29.5]
    assert len(monologue) >= 5 and monologue[0].start == pytest.approx(3.85, abs=0.03)
    assert monologue[-1].end == pytest.approx(29.15, abs=0.03)
    assert found[-1].start == pytest.approx(29.85, abs=0.03) and found[-1].end == pytest.approx(30.65, abs=0.03)


def test_padding_stays_inside_the_recording():
    found = run(Segmenter(SegmentSettings(pad=0.2), "energy"), bursts([(0.05, 1.0), (2.0, 2.9)], 2.95))
    assert found[0].start == 0.0 and found[-1].end == pytest.approx(2.95)


def test_segment_file_reads_any_rate_and_channel_count(tmp_path):
    audio = bursts([(0.5, 2.0), (3.0, 4.5)], 5.5)
    stereo = np.stack([soxr.resample(audio, SR, 44100)] * 2, axis=1)  # (n, 2)
    sf.write(tmp_path / "a.wav", stereo, 44100)
    sf.write(tmp_path / "b.flac", audio, SR)
    at_44k = segment_file(tmp_path / "a.wav", detector="energy")
    at_16k = segment_file(tmp_path / "b.flac", detector="energy")
    assert at_44k.duration == pytest.approx(5.5, abs=1e-3) and at_16k.duration == pytest.approx(5.5)
    assert len(at_44k.segments) == len(at_16k.segments) == 2
    for a, b in zip(at_44k.segments, at_16k.segments):
        assert a.start == pytest.approx(b.start, abs=0.03) and a.end == pytest.approx(b.end, abs=0.03)


def test_energy_detector_is_used_and_recorded_when_asked(tmp_path):
    sf.write(tmp_path / "a.wav", bursts([(0.5, 2.0)], 3.0), SR)
    result = segment_file(tmp_path / "a.wav", detector="energy")
    assert result.detector == "energy" and result.fallbacks == []
    assert result.to_json()["detector"] == "energy" and len(result.segments) == 1


def test_auto_falls_back_to_energy_when_the_model_cannot_load(tmp_path, monkeypatch):
    sf.write(tmp_path / "a.wav", bursts([(0.5, 2.0)], 3.0), SR)
    assert segment_file(tmp_path / "a.wav").detector == "silero"
    monkeypatch.setattr(seg_module, "SILERO_MODEL", ("silero_vad", "data/no_such_model.onnx"))
    result = segment_file(tmp_path / "a.wav")
    assert result.detector == "energy"
    assert len(result.fallbacks) == 1 and result.fallbacks[0].startswith("silero->energy: cannot load")
    with pytest.raises(EmofuseError, match="no_such_model.onnx"):
        segment_file(tmp_path / "a.wav", detector="silero")


def test_unreadable_audio_gives_one_clear_line(tmp_path):
    (tmp_path / "broken.wav").write_bytes(b"RIFF not really a wave file")
    with pytest.raises(DataError, match="broken.wav: cannot read audio"):
        segment_file(tmp_path / "broken.wav")


def test_inconsistent_settings_are_refused():
    with pytest.raises(ConfigError, match="min_pause / 2"):
        SegmentSettings(min_pause=0.2, pad=0.2)
    with pytest.raises(ConfigError, match="max_segment"):
        SegmentSettings(min_segment=2.0, max_segment=3.0)
    with pytest.raises(ConfigError, match="unknown speech detector"):
        Segmenter(detector="webrtc")


MEMORY_PROBE = textwrap.dedent("""
    import json, resource, sys
    from emofuse.align.segments import segment_file
    segment_file(sys.argv[1], detector="energy")  # warm up: the model, onnxruntime's arena, numpy's buffers
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = segment_file(sys.argv[2], detector="energy")
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"growth_kb": after - before, "segments": len(result.segments),
                      "duration": result.duration, "detector": result.detector}))
""")


@pytest.mark.slow
def test_memory_stays_flat_on_a_20_minute_recording(tmp_path):
    """Peak RSS growth of segment_file on 20 minutes at 24 kHz: the whole file decoded would
    take 77 MB at 16 kHz float32 (115 MB at 24 kHz), so a 50 MB bound shows it is never held.
    The energy detector keeps the test quick (Silero takes ~30 s here on tones it rightly
    calls no speech); both detectors hold a fixed-size state, the reading and the
    segmenter are the same code."""
    rate, minutes = 24000, 20
    short, long = tmp_path / "short.wav", tmp_path / "long.wav"
    sf.write(short, soxr.resample(bursts([(0.5, 2.0)], 3.0), SR, rate), rate, subtype="PCM_16")
    minute = soxr.resample(bursts([(s, s + 2.0) for s in np.arange(0.5, 60.0, 3.0)], 60.0), SR, rate)
    with sf.SoundFile(long, "w", rate, 1, subtype="PCM_16") as out:
        for _ in range(minutes):
            out.write(minute)
    probe = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(short), str(long)],
                           capture_output=True, text=True, check=True)
    figures = json.loads(probe.stdout)
    assert figures["duration"] == pytest.approx(minutes * 60, abs=0.01)
    assert figures["segments"] >= minutes * 20  # every 2 s burst, cut nowhere else
    assert figures["growth_kb"] < 50 * 1024, figures
    print(f"segment_file on {minutes} min: peak RSS growth {figures['growth_kb'] / 1024:.1f} MB")


@pytest.mark.data
def test_a_recording_scored_in_two_steps_gets_the_scores_of_one_pass(ravdess_root):
    """The speech check stops at the first speech frame and Whisper's span carries on from there:
    together they give what one pass from a fresh state gives; other audio starts afresh."""
    from emofuse.features.audio import load_audio

    audio = load_audio(ravdess_root / RAVDESS_CLIPS[0], SR)
    whole = seg_module.SileroDetector().recording(audio)
    detector = seg_module.SileroDetector()
    first = detector.recording(audio, stop_at=seg_module.SILERO_FLOOR)
    assert first[-1] >= seg_module.SILERO_FLOOR > first[:-1].max(initial=0.0) and len(first) < len(whole)
    np.testing.assert_array_equal(detector.recording(audio.copy()), whole)
    backwards = np.ascontiguousarray(audio[::-1])
    np.testing.assert_array_equal(detector.recording(backwards), seg_module.SileroDetector().recording(backwards))
