"""The built-in demo corpus: synthetic emotional speech where words and voice matter to
different degrees, so that fusion has something to show.

Eight espeak-ng voices speak 288 short English utterances of four emotions (angry, happy,
neutral, sad), 16 kHz mono FLAC, generated once by ``scripts/make_demo_corpus.py`` and
shipped inside the package so that nothing needs a speech synthesiser at run time. Each
utterance's ``meta["kind"]`` says where its emotion lives:

- ``lexical``: in the words only ("I really miss my dog"; the voice gives little away),
- ``acoustic``: in the voice only (ambiguous words such as "oh my gosh", which every
  speaker says with all four emotions),
- ``both``: words and voice agree.

So a lexical-only model cannot resolve the acoustic third, an acoustic-only model cannot
resolve the lexical third, and a fusion model can resolve both. Speakers are the voices
(``meta["voice"]``); fold by speaker. The labels are the four classes of the ``ravdess4``
and ``iemocap4`` label sets.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from emofuse.corpora.base import Corpus
from emofuse.errors import DataError

LABEL_SET = "ravdess4"  # identity mapping of angry, happy, neutral, sad
KINDS = ("lexical", "acoustic", "both")


def corpus_path() -> Path:
    """The demo manifest (`manifest.jsonl`, audio paths relative to it) inside the package."""
    return Path(str(resources.files("emofuse.demo").joinpath("data", "manifest.jsonl")))


def load_demo_corpus() -> Corpus:
    """Read the demo manifest; every audio file it names must be installed next to it."""
    path = corpus_path()
    if not path.is_file():
        raise DataError(path, "demo corpus not installed (regenerate with scripts/make_demo_corpus.py)")
    corpus = Corpus.read(path)
    missing = [u.audio for u in corpus if not u.audio or not Path(u.audio).is_file()]
    if missing:
        raise DataError(missing[0], f"demo audio file missing ({len(missing)} of {len(corpus)} missing)")
    return corpus
