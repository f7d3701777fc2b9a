"""Transcript normalisation: the words an aligner can pronounce and a word encoder can read.

Forced alignment needs every word in the pronunciation dictionary, so numbers, currency,
percentages, ordinals and clock times are spelled out as they are spoken, case is folded and
punctuation removed ("I paid $20!" -> ["i", "paid", "twenty", "dollars"]). Word-internal
apostrophes stay ("don't" is one dictionary word); hyphens and slashes split words.

Readings chosen where English is ambiguous (documented, not guessed per sentence):
- 4-digit numbers 1100-1999 and 2010-2099 without a thousands comma are read as years
  ("1999" -> "nineteen ninety nine", "2015" -> "twenty fifteen"); 2000-2009 as cardinals.
- "10:30" -> "ten thirty", "3:00" -> "three o'clock".
- "$3.50" -> "three dollars fifty cents"; "$5 million" -> "five million dollars".
- Decimals are read digit by digit after "point" ("3.14" -> "three point one four").
- Decades: "1990s" -> "nineteen nineties".
"""

from __future__ import annotations

import re
import unicodedata

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (10**3, "thousand"))
_ORDINAL_IRREGULAR = {
    "one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
    "nine": "ninth", "twelve": "twelfth",
}
_CURRENCIES = {"$": ("dollar", "dollars", "cent", "cents"), "£": ("pound", "pounds", "penny", "pence"),
               "€": ("euro", "euros", "cent", "cents")}
_MAGNITUDES = ("thousand", "million", "billion", "trillion")
_SYMBOLS = {"&": " and ", "+": " plus ", "@": " at ", "=": " equals ", "%": " percent "}


def number_to_words(n: int) -> list[str]:
    """Cardinal reading of a whole number, e.g. 1203 -> one thousand two hundred three."""
    if n < 0:
        return ["minus", *number_to_words(-n)]
    if n < 20:
        return [_ONES[n]]
    if n < 100:
        tens, ones = divmod(n, 10)
        return [_TENS[tens]] + ([_ONES[ones]] if ones else [])
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return [_ONES[hundreds], "hundred"] + (number_to_words(rest) if rest else [])
    for scale, name in _SCALES:
        if n >= scale:
            head, rest = divmod(n, scale)
            return number_to_words(head) + [name] + (number_to_words(rest) if rest else [])
    raise AssertionError("unreachable")


def ordinal_to_words(n: int) -> list[str]:
    """Ordinal reading: 21 -> twenty first, 100 -> one hundredth."""
    words = number_to_words(n)
    last = words[-1]
    if last in _ORDINAL_IRREGULAR:
        words[-1] = _ORDINAL_IRREGULAR[last]
    elif last.endswith("y"):
        words[-1] = last[:-1] + "ieth"
    else:
        words[-1] = last + "th"
    return words


def year_to_words(n: int) -> list[str]:
    """Year reading: 1999 -> nineteen ninety nine, 1905 -> nineteen oh five, 1900 -> nineteen hundred."""
    head, tail = divmod(n, 100)
    if tail == 0:
        return number_to_words(head) + ["hundred"]
    if tail < 10:
        return number_to_words(head) + ["oh"] + number_to_words(tail)
    return number_to_words(head) + number_to_words(tail)


def _digits(text: str) -> list[str]:
    return [_ONES[int(d)] for d in text]


def _int(text: str) -> int:
    return int(text.replace(",", ""))


def _spell_number(text: str) -> list[str]:
    """A bare number token (with optional thousands commas and decimals)."""
    whole, _, frac = text.partition(".")
    if not whole:  # ".5" is read "point five"
        return ["point", *_digits(frac)]
    plain = "," not in whole
    value = _int(whole)
    if frac == "" and plain and len(whole) == 4 and (1100 <= value <= 1999 or 2010 <= value <= 2099):
        words = year_to_words(value)
    else:
        words = number_to_words(value)
    if frac:
        words += ["point", *_digits(frac)]
    return words


def _currency(match: re.Match) -> str:
    one, many, sub_one, sub_many = _CURRENCIES[match.group("sym")]
    whole = _int(match.group("whole"))
    cents = match.group("cents")
    magnitude = match.group("mag")
    if magnitude:
        amount = _spell_number(match.group("whole") + (f".{cents}" if cents else ""))
        return " " + " ".join(amount + [magnitude.lower(), many]) + " "
    words = number_to_words(whole) + [one if whole == 1 else many]
    if cents:
        c = int(cents.ljust(2, "0"))
        if c:
            words += number_to_words(c) + [sub_one if c == 1 else sub_many]
    return " " + " ".join(words) + " "


_CURRENCY_RE = re.compile(
    r"(?P<sym>[$£€])\s?(?P<whole>\d{1,3}(?:,\d{3})+|\d+)(?:\.(?P<cents>\d{1,2}))?"
    r"(?:\s+(?P<mag>" + "|".join(_MAGNITUDES) + r")\b)?",
    re.IGNORECASE,
)
_PERCENT_RE = re.compile(r"(\d[\d,]*(?:\.\d+)?)\s?%")
_ORDINAL_RE = re.compile(r"\b(\d[\d,]*)(st|nd|rd|th)\b", re.IGNORECASE)
_DECADE_RE = re.compile(r"\b(\d+)'?s\b")
_CLOCK_RE = re.compile(r"\b(\d{1,2}):(\d{2})\b")
_NUMBER_RE = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d*\.\d+|\d+")


def _clock(match: re.Match) -> str:
    hours, minutes = int(match.group(1)), int(match.group(2))
    if minutes == 0:
        return " " + " ".join(number_to_words(hours) + ["o'clock"]) + " "
    tail = ["oh", *number_to_words(minutes)] if minutes < 10 else number_to_words(minutes)
    return " " + " ".join(number_to_words(hours) + tail) + " "


def _decade(match: re.Match) -> str:
    """1990s -> nineteen nineties, 2000s -> two thousands."""
    words = _spell_number(match.group(1))
    last = words[-1]
    words[-1] = last[:-1] + "ies" if last.endswith("y") else last + "s"
    return " " + " ".join(words) + " "


def _strip_accents(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def normalise_transcript(text: str | None) -> list[str]:
    """Lower-case words with numbers spelled out and punctuation removed (module docstring)."""
    if not text:
        return []
    text = unicodedata.normalize("NFKC", text)
    text = text.replace("\u2019", "'").replace("\u2018", "'").replace("\u02bc", "'")
    text = re.sub(r"[\u2010-\u2015]", " ", text)  # typographic dashes
    text = _CURRENCY_RE.sub(_currency, text)
    text = _PERCENT_RE.sub(lambda m: " " + " ".join(_spell_number(m.group(1))) + " percent ", text)
    text = _ORDINAL_RE.sub(lambda m: " " + " ".join(ordinal_to_words(_int(m.group(1)))) + " ", text)
    text = _CLOCK_RE.sub(_clock, text)
    text = _DECADE_RE.sub(_decade, text)
    text = re.sub(r"(?<!\w)-(?=\d)", " minus ", text)
    text = _NUMBER_RE.sub(lambda m: " " + " ".join(_spell_number(m.group(0))) + " ", text)
    for symbol, spoken in _SYMBOLS.items():
        text = text.replace(symbol, spoken)
    text = _strip_accents(text).lower()
    # Keep letters and word-internal apostrophes; everything else separates words.
    text = re.sub(r"[^a-z']+", " ", text)
    words = []
    for token in text.split():
        token = token.strip("'")
        if token:
            words.append(token)
    return words


_WRITTEN_RE = re.compile(r"\w+(?:'\w+)*|[^\w\s]")


def written_words(text: str | None) -> list[str]:
    """The transcript as written, for text-only models: words with their case, and each
    punctuation mark as a token of its own ("My duties?  All right." -> ["My", "duties", "?",
    "All", "right", "."]). Typographic apostrophes become "'"; nothing is spelled out.
    Punctuation and case carry emotion in written dialogue (MELD) that the spoken form loses."""
    if not text:
        return []
    text = unicodedata.normalize("NFKC", text)
    text = text.replace("\u2019", "'").replace("\u2018", "'").replace("\u02bc", "'")
    return _WRITTEN_RE.findall(text)


def normalise_word(text: str) -> list[str]:
    """One corpus word (e.g. from an IEMOCAP .wdseg file) as normalised words (maybe several)."""
    cleaned = re.sub(r"\(\d+\)$", "", text.strip())  # alternative-pronunciation marker: HELLO(2)
    if not cleaned or cleaned.startswith(("<", "[", "+")):  # <s>, <sil>, [NOISE], ++LAUGHTER++
        return []
    return normalise_transcript(cleaned)


def word_edits(reference: list[str], hypothesis: list[str]) -> tuple[int, int, int]:
    """(substitutions, deletions, insertions) of a minimal word-level Levenshtein alignment of
    `hypothesis` to `reference` (of equally short ones, the one with the fewest substitutions).
    O(len(reference) * len(hypothesis)): callers bound the lengths."""
    n, m = len(reference), len(hypothesis)
    previous = [(j, 0, 0, j) for j in range(m + 1)]  # (edits, subs, dels, ins) of reference[:i] vs hypothesis[:j]
    for i in range(1, n + 1):
        row = [(i, 0, i, 0)]
        for j in range(1, m + 1):
            e, s, d, k = previous[j - 1]
            diagonal = (e, s, d, k) if reference[i - 1] == hypothesis[j - 1] else (e + 1, s + 1, d, k)
            e, s, d, k = previous[j]
            deletion = (e + 1, s, d + 1, k)
            e, s, d, k = row[j - 1]
            row.append(min(diagonal, deletion, (e + 1, s, d, k + 1)))
        previous = row
    _, s, d, k = previous[m]
    return s, d, k


def word_error_rate(reference: list[str], hypothesis: list[str]) -> float:
    """Edits / reference words (1.0 for any hypothesis of an empty reference, 0.0 for none)."""
    if not reference:
        return float(bool(hypothesis))
    return sum(word_edits(reference, hypothesis)) / len(reference)
