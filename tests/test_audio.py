"""Audio input: formats, channels, rates, offsets, bad files; and odd audio through every feature."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import soundfile as sf

from emofuse.corpora.base import Utterance
from emofuse.errors import DataError
from emofuse.features.audio import load_audio
from emofuse.features.frames import frame_feature_names, get_frame_feature
from helpers import tone


def utt(path, **kw) -> Utterance:
    return Utterance(id="u", audio=str(path), speaker="s", label="x", original_label="x", **kw)


def dominant_hz(y: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    return float(np.argmax(spectrum) * sr / len(y))


def test_stereo_is_averaged_to_mono(tmp_path):
    left = tone(0.5)
    stereo = np.stack([left, np.zeros_like(left)], axis=1)
    sf.write(tmp_path / "st.wav", stereo, 16000)
    y = load_audio(tmp_path / "st.wav")
    assert y.ndim == 1 and y.dtype == np.float32
    np.testing.assert_allclose(y, left / 2, atol=1e-4)


def test_8khz_input_is_resampled_keeping_its_pitch(tmp_path):
    sf.write(tmp_path / "n.flac", tone(1.0, sr=8000, freq=440.0), 8000)
    y = load_audio(tmp_path / "n.flac", sr=16000)
    assert len(y) == 16000
    assert dominant_hz(y, 16000) == pytest.approx(440.0, abs=2.0)
    assert len(load_audio(tmp_path / "n.flac", sr=8000)) == 8000


def test_start_and_end_cut_the_utterance_out_of_a_longer_file(tmp_path):
    y = np.concatenate([np.zeros(16000), tone(1.0), np.zeros(16000)]).astype(np.float32)
    sf.write(tmp_path / "long.wav", y, 16000, subtype="FLOAT")
    cut = load_audio(utt(tmp_path / "long.wav", start=1.0, end=2.0))
    np.testing.assert_allclose(cut, y[16000:32000], atol=1e-6)
    assert len(load_audio(utt(tmp_path / "long.wav", start=2.5))) == 8000


def test_mp4_audio_is_read_through_pyav(tmp_path):
    av = pytest.importorskip("av")
    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=44100)
        stream.layout = "stereo"
        samples = np.tile(tone(1.0, sr=44100, freq=300.0)[None, :], (2, 1))
        for i in range(0, samples.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, i : i + 1024]), format="fltp", layout="stereo")
            frame.sample_rate = 44100
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    y = load_audio(path, sr=16000)
    assert abs(len(y) - 16000) < 1600  # the AAC encoder adds priming samples
    assert dominant_hz(y, 16000) == pytest.approx(300.0, abs=3.0)


def test_missing_corrupt_and_empty_files_give_one_line_errors_naming_the_file(tmp_path):
    with pytest.raises(DataError, match="not found") as exc:
        load_audio(tmp_path / "nope.wav")
    assert "nope.wav" in str(exc.value)
    (tmp_path / "junk.wav").write_bytes(b"RIFF not really a wave file" * 10)
    with pytest.raises(DataError, match="cannot decode audio") as exc:
        load_audio(tmp_path / "junk.wav")
    assert "junk.wav" in str(exc.value) and "\n" not in str(exc.value)
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000)
    with pytest.raises(DataError, match="empty"):
        load_audio(tmp_path / "empty.wav")
    with pytest.raises(DataError, match="has no audio file"):
        load_audio(Utterance(id="t", audio=None, speaker="s", label="x", original_label="x"))


def test_offsets_outside_the_file_are_rejected(tmp_path):
    sf.write(tmp_path / "a.wav", tone(1.0), 16000)
    with pytest.raises(DataError, match="beyond the end"):
        load_audio(utt(tmp_path / "a.wav", start=5.0))
    with pytest.raises(DataError, match="not after its start"):
        load_audio(utt(tmp_path / "a.wav", start=0.5, end=0.5))


def test_non_finite_samples_are_rejected(tmp_path):
    y = tone(0.2)
    y[10] = np.nan
    sf.write(tmp_path / "nan.wav", y, 16000, subtype="FLOAT")
    with pytest.raises(DataError, match="NaN"):
        load_audio(tmp_path / "nan.wav")


@pytest.mark.parametrize("name", frame_feature_names())
def test_silent_clipped_and_short_audio_give_finite_frames_on_the_10ms_grid(name):
    feature = get_frame_feature(name)
    clipped = np.clip(tone(0.5) * 20, -1.0, 1.0)
    for y, frames in ((np.zeros(8000, np.float32), 50), (clipped, 50), (tone(0.1), 10), (tone(0.004), 1)):
        x = feature.extract(y)
        assert x.shape == (frames, feature.dim)
        assert np.isfinite(x).all()


def test_ten_minute_file_extracts_fbank_with_bounded_memory(tmp_path):
    seconds = 600
    rng = np.random.default_rng(1)
    y = np.tile(tone(1.0), seconds) + 0.01 * rng.standard_normal(seconds * 16000).astype(np.float32)
    sf.write(tmp_path / "ten.flac", y, 16000)
    del y
    tracemalloc.start()
    audio = load_audio(tmp_path / "ten.flac")
    x = get_frame_feature("fbank40").extract(audio)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert x.shape == (60000, 40)
    # The samples (38 MB as float32), one padded copy and a few FFT blocks (~116 MB); an
    # all-at-once complex spectrum of 60,000 frames would take over 700 MB.
    assert peak < 140e6, f"peak {peak / 1e6:.0f} MB"
