"""Audio input: any file soundfile (libsndfile) or PyAV (FFmpeg) reads, as float32 mono.

`load_audio(utt, sr)` honours the utterance's start/end offsets (seconds), downmixes by
averaging the channels and resamples with a polyphase filter (scipy `resample_poly`).
soundfile is tried first (it seeks, so a 3 s cut of a 1 h file reads 3 s); containers it
cannot open (mp4, m4a, webm, ...) go through PyAV. Every failure is a `DataError` naming
the file and the problem.

For untrusted uploads, `load_audio_bounded(path, sr, max_seconds)` never decodes more than it
may keep: `probe_audio` reads duration, rate and channels from the header first (soundfile
for WAV/FLAC/OGG, PyAV stream metadata for other containers) and refuses before decoding;
decoding then goes block by block and stops as soon as the decoded length passes the limit,
for containers whose header does not say, or lies. A one-hour FLAC of silence is 0.7 MB on
disk and 1.4 GB as float32 stereo samples: the limit is checked before, not after.

One decoded frame is bounded too, whatever the container or codec says (`MAX_FRAME_SAMPLES`):
a 77 KB ALAC file can declare a single frame of 16,777,216 samples x 8 channels (512 MB before
conversion). FFmpeg decodes the first packets while it opens a file (to fill in the stream's
parameters), so every PyAV decoder here is opened with libavcodec's `max_samples`, which fails
a frame over the limit before its buffers are allocated, and a stream whose header declares
larger frames (ALAC's magic cookie) is refused by name (`guard_decoder`).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import ceil, gcd
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from emofuse.corpora.base import Utterance
from emofuse.errors import DataError, Refused, TooLong, Undecodable, Unsupported  # noqa: F401 -- Refused: callers catch it from here


def resample(y: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Polyphase resampling of a 1-D signal; float32 out."""
    if sr_in == sr_out:
        return np.asarray(y, dtype=np.float32)
    g = gcd(int(sr_in), int(sr_out))
    return resample_poly(np.asarray(y, dtype=np.float32), sr_out // g, sr_in // g).astype(np.float32)


def _check_span(path: Path, start: float | None, end: float | None, duration: float) -> tuple[float, float]:
    start = 0.0 if start is None else float(start)
    end = duration if end is None else float(end)
    if start < 0:
        raise DataError(path, f"utterance start {start:.3f}s is negative")
    if start >= duration:
        raise DataError(path, f"utterance start {start:.3f}s is beyond the end of the audio ({duration:.3f}s)")
    if end <= start:
        raise DataError(path, f"utterance end {end:.3f}s is not after its start {start:.3f}s")
    return start, min(end, duration)


def _read_soundfile(path: Path, start: float | None, end: float | None) -> tuple[np.ndarray, int]:
    with sf.SoundFile(str(path)) as f:
        sr = f.samplerate
        if f.frames == 0:
            raise DataError(path, "audio is empty (0 samples)")
        start_s, end_s = _check_span(path, start, end, f.frames / sr)
        first = int(round(start_s * sr))
        count = max(1, int(round(end_s * sr)) - first)
        f.seek(first)
        y = f.read(count, dtype="float32", always_2d=True)  # (N, C)
    return (y[:, 0] if y.shape[1] == 1 else y.mean(axis=1)), sr


def _read_av(path: Path, start: float | None, end: float | None) -> tuple[np.ndarray, int]:
    import av

    with av.open(str(path), options=_DECODER_LIMITS) as container:  # the limit holds while FFmpeg probes
        streams = container.streams.audio
        if not streams:
            raise Undecodable(path, "the file holds no audio stream")
        stream = streams[0]
        guard_decoder(path, stream)
        sr = stream.codec_context.sample_rate or stream.rate
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sr)
        chunks = []
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    y = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    if y.size == 0:
        raise DataError(path, "audio is empty (0 samples)")
    start_s, end_s = _check_span(path, start, end, y.size / sr)
    return y[int(round(start_s * sr)) : max(int(round(end_s * sr)), int(round(start_s * sr)) + 1)], sr


def load_audio(
    source: Utterance | str | Path,
    sr: int = 16000,
    start: float | None = None,
    end: float | None = None,
) -> np.ndarray:
    """float32 mono samples at `sr` Hz of an utterance (its start/end) or of a file.

    Raises DataError for a missing, unreadable, empty or non-finite file, or offsets outside it.
    """
    if isinstance(source, Utterance):
        if not source.audio:
            raise DataError(None, f"utterance {source.id!r} has no audio file")
        path, start, end = Path(source.audio), source.start, source.end
    else:
        path = Path(source)
    if not path.is_file():
        raise DataError(path, "audio file not found")
    try:
        y, native = _read_soundfile(path, start, end)
    except DataError:
        raise
    except Exception as sf_exc:  # libsndfile cannot open this container: try FFmpeg
        try:
            y, native = _read_av(path, start, end)
        except DataError:
            raise
        except Exception as av_exc:
            raise Undecodable(path, f"cannot decode audio (soundfile: {sf_exc}; PyAV: {av_exc})") from av_exc
    if not np.all(np.isfinite(y)):
        raise DataError(path, "audio holds NaN or infinite samples")
    return resample(y, native, sr)


# ---------------------------------------------------------------------------------------------
# Untrusted audio: the header is checked before decoding, and decoding stops at the limit.

MIN_RATE, MAX_RATE = 4_000, 192_000  # Hz: below, nothing a speech model can use; above, no real recorder
MAX_CHANNELS = 8
# One decoded frame, all its channels together (8 MiB at 32 bits a sample; the float32 mono copies
# made from it are smaller): 262,144 samples a channel at 8 channels, 2,097,152 in mono. Speech
# codecs' frames are far smaller: AAC 1,024-2,048 samples, MP3 1,152, Opus at most 5,760, Vorbis
# at most 8,192, ALAC 4,096 as Apple's encoder and FFmpeg write it, FLAC at most 65,535 (its
# header's field is 16 bits: 524,280 at 8 channels), FFmpeg's PCM packets 1,024-4,096.
MAX_FRAME_SAMPLES = 2**21
# AVCodecContext option, checked by libavcodec (ff_get_buffer) before a frame's buffers are
# allocated: the decoder fails that packet (EINVAL) instead. Given to FFmpeg's stream probe
# through av.open's `options` and to the decoder PyAV opens later through its codec context.
_DECODER_LIMITS = {"max_samples": str(MAX_FRAME_SAMPLES)}
BLOCK_SECONDS = 1.0  # decoded per step: memory stays at the limit plus one block
_SF_UNKNOWN_LENGTH = 2**62  # libsndfile reports SF_COUNT_MAX frames for a stream of unknown length
# The containers FFmpeg may demux an untrusted file as (demuxer names; "mov" is mp4/m4a/mov/3gp,
# "matroska" is mkv/webm). FFmpeg otherwise picks any of its ~350 demuxers by content, among them
# playlists (HLS, concat, DASH) that open other files or URLs named inside the upload.
SPEECH_CONTAINERS = ("wav", "w64", "flac", "ogg", "mp3", "mov", "matroska", "aac", "aiff", "caf", "amr")
# AVFormatContext options: only local files, only those demuxers (checked before a demuxer reads its header)
_UNTRUSTED_OPEN = {"protocol_whitelist": "file", "format_whitelist": ",".join(SPEECH_CONTAINERS)}


@dataclass(frozen=True)
class AudioHeader:
    """What a file says about itself, read without decoding."""

    sample_rate: int
    channels: int
    duration: float | None  # seconds; None when the container does not say
    reader: str  # "soundfile" or "pyav": the decoder that will read it


def open_untrusted(path, format: str | None = None, options: dict | None = None):
    """A PyAV input container for an untrusted file: read through the `file` protocol only and
    demuxed only as one of SPEECH_CONTAINERS; Unsupported for any other format, and
    for an audio stream whose header declares frames over MAX_FRAME_SAMPLES (`guard_decoder`).
    `path` may be a file object (a live stream), which `format` then names; `options` are
    FFmpeg's (probesize, ...). Every frame decoded from it is bounded as `guard_decoder` says.

    FFmpeg refuses a demuxer off its whitelist right after probing, before the demuxer reads
    its header, so a playlist never opens the files it names. The refusal is only an error code:
    the refused demuxer's name is in FFmpeg's log alone, and turning that log on process-wide
    risks deadlocks (PyAV issue #751), so the answer names the file's extension instead."""
    import av

    named = isinstance(path, (str, Path))
    try:
        container = av.open(str(path) if named else path, format=format, container_options=_UNTRUSTED_OPEN,
                            options={**(options or {}), **_DECODER_LIMITS})  # the limit holds while FFmpeg probes
    except av.error.ArgumentError:  # off the whitelist (or a listed demuxer's EINVAL: not audio either)
        suffix = Path(path).suffix.lower() if named else ""
        raise Unsupported(path, _not_accepted(f"this {suffix!r} file" if suffix else "this file")) from None
    try:
        if not set(container.format.name.split(",")) & set(SPEECH_CONTAINERS):  # FFmpeg checks this already
            raise Unsupported(path, _not_accepted(f"container format {container.format.name!r}"))
        for stream in container.streams.audio:
            guard_decoder(path, stream)
    except BaseException:
        container.close()
        raise
    return container


def _declared_frame(codec_context) -> tuple[int, int]:
    """(samples per channel, channels) of the largest frame the stream's header lets its decoder
    make; (0, channels) when the header does not say."""
    samples, channels = int(codec_context.frame_size or 0), int(codec_context.channels or 0)
    extradata = codec_context.extradata or b""
    if codec_context.name == "alac" and len(extradata) >= 36:
        # ALACSpecificConfig, read where FFmpeg's decoder reads it (alac_set_info), after the 12
        # bytes of its atom header: frameLength (32 bits, big-endian), compatibleVersion, bitDepth,
        # pb, mb, kb, numChannels. FFmpeg accepts a frameLength up to 4096 x 4096.
        samples, channels = int.from_bytes(extradata[12:16], "big"), extradata[21]
    return samples, channels


def guard_decoder(path, stream) -> None:
    """Bound every frame `stream`'s decoder makes to MAX_FRAME_SAMPLES, before it allocates one:
    Unsupported now when the header declares larger frames, and libavcodec's
    `max_samples` for codecs whose frame size only the packets say (the decoder then fails that
    packet with EINVAL, a DataError where it is decoded). Call before the first decode."""
    codec_context = stream.codec_context
    if codec_context is None:  # no decoder for this codec: nothing will be decoded
        return
    samples, channels = _declared_frame(codec_context)
    if samples * max(channels, 1) > MAX_FRAME_SAMPLES:
        raise Unsupported(path, f"{codec_context.name.upper()} frames of {samples} samples x {channels} "
                                     f"channels: over the limit of {MAX_FRAME_SAMPLES} samples per decoded frame")
    codec_context.options = {**codec_context.options, **_DECODER_LIMITS}


def _not_accepted(what: str) -> str:
    return (f"not an audio file that is decoded here: {what} is not a speech container (send one of: "
            f"{', '.join(SPEECH_CONTAINERS).replace('mov', 'mp4/m4a/mov').replace('matroska', 'webm/mkv')})")


def probe_audio(path: str | Path) -> AudioHeader:
    """Duration, sample rate and channels from the file's header, without decoding samples.

    soundfile first (WAV, FLAC, OGG, ...); a file it cannot open, or whose header declares no
    samples (a streaming WAV writer leaves 0 there), goes to PyAV's stream metadata, opened as
    an untrusted file (`open_untrusted`: local file only, speech containers only). DataError
    when neither can open it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "audio file not found")
    try:
        info = sf.info(str(path))
        if info.frames >= _SF_UNKNOWN_LENGTH:  # a FLAC streamed out with total samples 0 ("unknown")
            # libsndfile fails at the end of such a stream; FFmpeg reads it to its end
            return AudioHeader(int(info.samplerate), int(info.channels), None, "pyav")
        if info.frames > 0:
            return AudioHeader(int(info.samplerate), int(info.channels), info.frames / info.samplerate, "soundfile")
    except Exception as exc:  # noqa: BLE001 - libsndfile cannot open this container: ask FFmpeg
        sf_problem = str(exc)
    else:
        sf_problem = "the header declares 0 samples"
    import av

    try:
        with open_untrusted(path) as container:
            if not container.streams.audio:
                raise Undecodable(path, "the file holds no audio stream")
            stream = container.streams.audio[0]
            rate = int(stream.codec_context.sample_rate or stream.rate or 0)
            channels = int(stream.codec_context.channels or 0)
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / av.time_base
            else:
                duration = None
    except DataError:
        raise
    except Exception as av_exc:  # noqa: BLE001
        raise Undecodable(path, f"cannot read the audio header (soundfile: {sf_problem}; PyAV: {av_exc})") from None
    return AudioHeader(rate, channels, duration, "pyav")


def check_audio_header(path: str | Path, header: AudioHeader, max_seconds: float | None) -> None:
    """Refuse, before decoding, a rate outside 4-192 kHz, more than 8 channels (Unsupported)
    or a declared duration over `max_seconds` (TooLong)."""
    if not MIN_RATE <= header.sample_rate <= MAX_RATE:
        raise Unsupported(path, f"sample rate {header.sample_rate} Hz is outside "
                                     f"{MIN_RATE // 1000}-{MAX_RATE // 1000} kHz")
    if not 1 <= header.channels <= MAX_CHANNELS:
        raise Unsupported(path, f"{header.channels} channels: at most {MAX_CHANNELS} are decoded")
    if max_seconds is not None and header.duration is not None and header.duration > max_seconds:
        raise TooLong(path, f"the recording is {header.duration:.1f} s long; the limit is {max_seconds:g} s")


def decode_bounded(path: str | Path, header: AudioHeader, max_seconds: float | None) -> np.ndarray:
    """float32 mono samples at the header's rate, decoded block by block; TooLong as soon as
    more than `max_seconds` have been decoded, whatever the header said."""
    path = Path(path)
    limit = None if max_seconds is None else int(ceil(max_seconds * header.sample_rate))
    chunks: list[np.ndarray] = []
    decoded = 0

    def keep(block: np.ndarray) -> None:  # block: (N,) mono
        nonlocal decoded
        decoded += block.size
        if limit is not None and decoded > limit:
            raise TooLong(path, f"more than {max_seconds:g} s decoded (the limit); the header "
                                     f"declared {'no length' if header.duration is None else f'{header.duration:.1f} s'}")
        chunks.append(block)

    block_frames = max(1, int(BLOCK_SECONDS * header.sample_rate))
    try:
        if header.reader == "soundfile":
            with sf.SoundFile(str(path)) as f:
                while True:
                    y = f.read(block_frames, dtype="float32", always_2d=True)  # (N, C)
                    if y.shape[0] == 0:
                        break
                    keep(y[:, 0].copy() if y.shape[1] == 1 else y.mean(axis=1))
        else:
            import av

            with open_untrusted(path) as container:
                stream = container.streams.audio[0]
                resampler = av.AudioResampler(format="flt", layout="mono", rate=header.sample_rate)
                for frame in container.decode(stream):
                    for out in resampler.resample(frame):
                        keep(out.to_ndarray().reshape(-1).astype(np.float32))
                for out in resampler.resample(None):
                    keep(out.to_ndarray().reshape(-1).astype(np.float32))
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - damaged audio once some decoded (422), not audio at all before (415)
        kind = DataError if chunks else Undecodable
        raise kind(path, f"cannot decode audio ({type(exc).__name__}: {exc})") from None
    y = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    if y.size == 0:
        raise DataError(path, "audio is empty (0 samples)")
    if not np.all(np.isfinite(y)):
        raise DataError(path, "audio holds NaN or infinite samples")
    return y


def load_audio_bounded(path: str | Path, sr: int = 16000, max_seconds: float | None = None) -> np.ndarray:
    """float32 mono samples at `sr` Hz of an untrusted file, refused before decoding when its
    header is out of bounds and while decoding when it runs past `max_seconds`.

    TooLong, Unsupported, DataError for anything unreadable."""
    header = probe_audio(path)
    check_audio_header(path, header, max_seconds)
    return resample(decode_bounded(path, header, max_seconds), header.sample_rate, sr)
