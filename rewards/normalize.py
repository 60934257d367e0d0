"""Text normalisation before comparing words: case, punctuation, numbers.

ASR references write "25" where a spoken reply says "twenty five"; without normalising both sides
the same words count as errors. No dependency of ours spells numbers in English, so
:func:`number_to_words` does it by hand for 0–999 999 (larger numbers are read digit by digit).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
NUMBER = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?")


def number_to_words(n: int) -> str:
    """English words for 0 ≤ n ≤ 999 999, e.g. 1205 → "one thousand two hundred five"."""
    if not 0 <= n <= 999_999:
        raise ValueError(f"number_to_words handles 0..999999, got {n}")
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + ("" if n % 10 == 0 else " " + ONES[n % 10])
    if n < 1000:
        rest = "" if n % 100 == 0 else " " + number_to_words(n % 100)
        return ONES[n // 100] + " hundred" + rest
    rest = "" if n % 1000 == 0 else " " + number_to_words(n % 1000)
    return number_to_words(n // 1000) + " thousand" + rest


def _spell_number(match: re.Match) -> str:
    whole, _, fraction = match.group().replace(",", "").partition(".")
    if int(whole) <= 999_999:
        words = number_to_words(int(whole))
    else:
        words = " ".join(ONES[int(d)] for d in whole)
    if fraction:
        words += " point " + " ".join(ONES[int(d)] for d in fraction)
    return f" {words} "


@dataclass(frozen=True)
class TextNormalizer:
    """Callable ``str -> str`` applied to both reference and hypothesis before scoring.

    Punctuation and symbols become spaces (apostrophes are dropped, so "it's" → "its");
    ``remove_whitespace`` is for character error rates on Chinese and Japanese text.
    """

    lowercase: bool = True
    remove_punctuation: bool = True
    digits_to_words: bool = True
    remove_whitespace: bool = False

    def __call__(self, text: str) -> str:
        text = unicodedata.normalize("NFKC", text or "")
        if self.digits_to_words:
            text = NUMBER.sub(_spell_number, text)
        if self.lowercase:
            text = text.lower()
        if self.remove_punctuation:
            text = text.replace("'", "").replace("’", "")
            text = "".join(" " if unicodedata.category(ch)[0] in "PS" else ch for ch in text)
        if self.remove_whitespace:
            return "".join(text.split())
        return " ".join(text.split())
