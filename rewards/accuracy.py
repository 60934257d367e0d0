"""Answer accuracy for multiple-choice and short exact answers, as in MMAU-style audio QA.

Step-Audio-R1's audio reward ``0.8·[answer correct] + 0.2·[reasoning present]`` is a recipe of two
specs, no function of its own::

    rewards:
      - {name: accuracy, weight: 0.8}
      - {name: think_length, weight: 0.2}   # no maximum: "reasoning present"
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from rewards.normalize import TextNormalizer
from rewards.registry import reward
from rewards.text import column, completion_fields

_GOLD_LETTER = re.compile(r"^\(?([A-Z])\)?\.?$")
# "B", "B.", "B)", "(B)", "B: text" at the start, or "answer is (B)" / "option B" anywhere.
_ANSWER_LETTER = (
    re.compile(r"^\(([A-Z])\)|^([A-Z])(?:[.):]|$)"),
    re.compile(r"\b(?i:answer|option|choice)(?:\s+is)?\s*:?\s*\(?([A-Z])\)?(?!\w)"),
)
_normalize = TextNormalizer()


@reward("accuracy")
def accuracy(
    prompts: list[Any],
    completions: list[Any],
    label_column: str = "label",
    choices_column: str = "choices",
    answer_tags: Sequence[str] = ("<answer>", "</answer>"),
    contains: bool = False,
    **kwargs: Any,
) -> list[float | None]:
    """1.0 when the answer equals the gold answer after normalisation (case, punctuation, numbers).

    The gold answer is the ``label`` column (TRL's ``solution`` is accepted too); rows without one
    get None. For multiple choice the gold answer may be a letter ("B") or an option's text, and
    so may the answer; with the row's options in ``choices_column`` the two are interchangeable.
    Text inside ``answer_tags`` is the answer when present. ``contains`` also accepts answers
    holding the gold text as whole words ("The speaker is male.").
    """
    golds = column(kwargs, label_column, "accuracy")
    options = kwargs.get(choices_column)
    scores: list[float | None] = []
    for i, parsed in enumerate(completion_fields(completions, kwargs)):
        if golds[i] is None or not str(golds[i]).strip():
            scores.append(None)
            continue
        choices = list(options[i] or []) if isinstance(options, Sequence) else []
        answer = _inside(parsed.answer, answer_tags)
        scores.append(float(_correct(answer, str(golds[i]).strip(), choices, contains)))
    return scores


def _inside(answer: str, tags: Sequence[str]) -> str:
    open_tag, close_tag = tags
    if open_tag in answer:
        answer = answer.rsplit(open_tag, 1)[1].split(close_tag, 1)[0]
    return answer.strip()


def _letter(answer: str) -> str | None:
    for pattern in _ANSWER_LETTER:
        match = pattern.search(answer)
        if match:
            return next(g for g in match.groups() if g).upper()
    return None


def _option(choices: list[Any], letter: str) -> str | None:
    index = ord(letter) - ord("A")
    return str(choices[index]) if 0 <= index < len(choices) else None


def _correct(answer: str, gold: str, choices: list[Any], contains: bool) -> bool:
    picked = _letter(answer)
    gold_letter = _GOLD_LETTER.match(gold)
    if gold_letter:
        if picked is not None:
            return picked == gold_letter.group(1)
        gold = _option(choices, gold_letter.group(1)) or ""
        if not gold:
            return False
    elif picked is not None and choices:
        option = _option(choices, picked)
        if option is not None and _normalize(option) == _normalize(gold):
            return True
    want, got = _normalize(gold), _normalize(answer)
    return bool(want) and (got == want or (contains and f" {want} " in f" {got} "))
