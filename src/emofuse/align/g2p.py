"""Pronunciations for words the dictionary lacks (names, slang, typos), so alignment can go on.

Forced alignment only needs a plausible phone string of about the right length, so the
fallback is deliberately simple (no trained G2P model is available offline):

1. the dictionary itself (`lookup`), also without a possessive ("'s" -> + Z);
2. a compound of two dictionary words, longest known first part first ("sunroom" ->
   "sun" + "room"), each part at least 3 letters;
3. letter-to-phone rules: greedy longest match over the grapheme table below, a silent
   final "e", soft "c"/"g" before e/i/y, doubled consonants read once. ARPAbet as in CMUdict.
"""

from __future__ import annotations

from typing import Callable

Lookup = Callable[[str], "str | None"]

# Longest graphemes first within the greedy matcher; values are ARPAbet phones.
_GRAPHEMES: dict[str, str] = {
    "tion": "SH AH N", "sion": "ZH AH N", "ough": "AO", "augh": "AO", "eigh": "EY",
    "igh": "AY", "tch": "CH", "dge": "JH", "sch": "S K", "que": "K",
    "ch": "CH", "sh": "SH", "th": "TH", "ph": "F", "wh": "W", "ck": "K", "ng": "NG",
    "qu": "K W", "kn": "N", "wr": "R", "gh": "G",
    "ee": "IY", "ea": "IY", "ie": "IY", "oo": "UW", "ou": "AW", "ow": "OW", "oi": "OY",
    "oy": "OY", "ai": "EY", "ay": "EY", "ei": "EY", "ey": "IY", "oa": "OW", "au": "AO",
    "aw": "AO", "ew": "UW", "ue": "UW", "ar": "AA R", "er": "ER", "ir": "ER", "ur": "ER",
    "or": "AO R",
    "a": "AE", "e": "EH", "i": "IH", "o": "AA", "u": "AH",
    "b": "B", "c": "K", "d": "D", "f": "F", "g": "G", "h": "HH", "j": "JH", "k": "K",
    "l": "L", "m": "M", "n": "N", "p": "P", "q": "K", "r": "R", "s": "S", "t": "T",
    "v": "V", "w": "W", "x": "K S", "y": "Y", "z": "Z",
}
_LONGEST = max(len(g) for g in _GRAPHEMES)
_VOWELS = set("aeiou")


def letters_to_phones(word: str) -> str:
    """Rule-based ARPAbet for a lower-case word (step 3 of the module docstring)."""
    letters = "".join(c for c in word.lower() if c.isalpha())
    if not letters:
        return "AH"
    # Silent final e after a consonant ("make"), but not in short words ("be", "he").
    if len(letters) > 3 and letters.endswith("e") and letters[-2] not in _VOWELS:
        letters = letters[:-1]
    phones: list[str] = []
    i = 0
    while i < len(letters):
        for size in range(min(_LONGEST, len(letters) - i), 0, -1):
            chunk = letters[i : i + size]
            if chunk in _GRAPHEMES:
                break
        nxt = letters[i + size] if i + size < len(letters) else ""
        if chunk == "c" and nxt in ("e", "i", "y"):
            sound = "S"
        elif chunk == "g" and nxt in ("e", "i", "y"):
            sound = "JH"
        elif chunk == "y":
            sound = "Y" if i == 0 else ("AY" if len(letters) <= 3 else "IY")
        else:
            sound = _GRAPHEMES[chunk]
        new = sound.split()
        if not (phones and len(chunk) == 1 and chunk not in _VOWELS and new == phones[-1:]):
            phones.extend(new)  # a doubled consonant ("ll") is one phone
        i += size
    return " ".join(phones)


def pronounce(word: str, lookup: Lookup) -> tuple[str, str]:
    """(phones, how) for `word`; `how` is "dictionary", "possessive", "compound" or "rules"."""
    found = lookup(word)
    if found:
        return found, "dictionary"
    if word.endswith("'s") and lookup(word[:-2]):
        return f"{lookup(word[:-2])} Z", "possessive"
    bare = word.replace("'", "")
    if bare != word and lookup(bare):
        return lookup(bare), "dictionary"
    for cut in range(len(bare) - 3, 2, -1):
        head, tail = lookup(bare[:cut]), lookup(bare[cut:])
        if head and tail:
            return f"{head} {tail}", "compound"
    return letters_to_phones(bare), "rules"
