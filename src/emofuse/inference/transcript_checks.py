"""Checks of a transcript given with a recording, before and after it is aligned:

- a transcript longer than the audio could hold (over MAX_WORDS_PER_SECOND words a second
  plus MAX_WORDS_EXTRA, or a word over MAX_WORD_CHARS characters) is `TranscriptTooLong` at
  once: aligning it would take a worker for minutes (alignment time grows with its square);
- a transcript that aligns but is not what the recogniser hears (word error rate over
  TRANSCRIPT_WER_LIMIT against its hypothesis) is predicted with a warning that quotes what
  was heard.
"""

from __future__ import annotations

import numpy as np

from emofuse.errors import TranscriptTooLong

MAX_WORDS_PER_SECOND = 10  # fast speech is ~4-5 words a second; twice that and more is not a transcript of it
MAX_WORDS_EXTRA = 10  # and a short clip's transcript may hold a few more
MAX_WORD_CHARS = 50  # longer than any English word a person says
# Word error rate of a given transcript against the recogniser's hypothesis above which the
# answer warns that the transcript is likely not what was said (over a third of its words).
# On RAVDESS's true statements, Whisper tiny.en's clips over it are false alarms: 1.46 % of all
# 1440 (over 0.2: 5.6 %; over 0.5: 0.97 %), benchmarks/results/asr_full.md.
# A transcript two words of six away from what was said (the other RAVDESS statement) passes.
TRANSCRIPT_WER_LIMIT = 0.34


def check_transcript_size(transcript: str, seconds: float, label: str) -> None:
    """TranscriptTooLong unless `transcript` fits `seconds` of audio (module docstring); checked
    on the raw text before anything costly reads it."""
    limit = int(MAX_WORDS_PER_SECOND * seconds) + MAX_WORDS_EXTRA
    if len(transcript) > limit * (MAX_WORD_CHARS + 1):
        raise TranscriptTooLong(label, f"the transcript has {len(transcript)} characters: more than {seconds:.1f} s "
                                       f"of audio could hold (at most {limit} words of {MAX_WORD_CHARS} characters)")
    words = transcript.split()
    if len(words) > limit:
        raise TranscriptTooLong(label, f"the transcript has {len(words)} words: more than {seconds:.1f} s of audio "
                                       f"could hold (at most {MAX_WORDS_PER_SECOND} a second + {MAX_WORDS_EXTRA} = {limit})")
    longest = max(words, key=len, default="")
    if len(longest) > MAX_WORD_CHARS:
        raise TranscriptTooLong(label, f"the transcript has a word of {len(longest)} characters "
                                       f"('{longest[:20]}...'); at most {MAX_WORD_CHARS} are accepted")


def compare_with_recogniser(checker, audio: np.ndarray, alignment) -> None:
    """Warn (in `alignment.warnings`) when the transcript is far from what `checker` hears."""
    from emofuse.align.text import word_error_rate

    heard = checker.transcribe(audio)
    said = [w.text for w in alignment.words]
    wer = word_error_rate(said, [w.text for w in heard.words])
    if wer > TRANSCRIPT_WER_LIMIT:
        quoted = " ".join(w.text for w in heard.words[:12]) + (" ..." if len(heard.words) > 12 else "")
        alignment.warnings.append(
            f"the transcript is likely not what was said: {checker.name} heard "
            f"{repr(quoted) if heard.words else 'no words'} (word error rate {wer:.2f} > {TRANSCRIPT_WER_LIMIT}); "
            "check it, or leave it out to use the recogniser's words (--trust-transcript skips this check)")
