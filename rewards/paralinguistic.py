"""Paralinguistic appropriateness: does the answer name the right gender, age, emotion, pitch, speed…

:func:`paralinguistic` reads which level of a dimension the answer asserts — through synonym sets
("quick", "rapid" → fast) and skipping negated mentions ("not fast", "rather than slow") — and
compares it with the row's label. :class:`ParalinguisticClassifier` takes the label from an
``audio-classification`` checkpoint instead (the input audio, or the spoken reply), and
``rewards.judge`` asks a language model. Dimensions with free-text labels (timbre, scene, style)
are for the judge.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from rewards.audio import sample_rates, to_mono
from rewards.registry import resolve, reward
from rewards.text import CJK, column, completion_fields

# The label spaces of the benchmarks Step-Audio 2 reports (StepEval-Audio-Paralinguistic dimensions,
# IEMOCAP / MELD emotions, VocalSound events); the first word of each level is its canonical form.
LABELS: dict[str, dict[str, tuple[str, ...]]] = {
    "gender": {
        "male": (
            "male",
            "man",
            "men",
            "masculine",
            "gentleman",
            "guy",
            "boy",
            "男性",
            "男声",
            "男",
        ),
        "female": ("female", "woman", "women", "feminine", "lady", "girl", "女性", "女声", "女"),
    },
    "age": {
        "child": ("child", "children", "kid", "kids", "toddler", "儿童", "小孩"),
        "teenager": ("teenager", "teen", "teenage", "adolescent"),
        "adult": ("adult", "middle-aged", "middle aged", "grown-up", "成年"),
        "elderly": ("elderly", "old", "senior", "aged", "older person", "老人", "老年"),
    },
    "emotion": {
        "neutral": ("neutral", "calm", "emotionless", "flat", "平静", "中性"),
        "happy": (
            "happy",
            "happiness",
            "joy",
            "joyful",
            "cheerful",
            "glad",
            "delighted",
            "开心",
            "高兴",
        ),
        "sad": (
            "sad",
            "sadness",
            "unhappy",
            "sorrowful",
            "depressed",
            "gloomy",
            "melancholy",
            "伤心",
            "难过",
        ),
        "angry": ("angry", "anger", "furious", "mad", "irritated", "annoyed", "生气", "愤怒"),
        "surprised": ("surprised", "surprise", "astonished", "amazed", "shocked"),
        "fearful": ("fearful", "fear", "afraid", "scared", "frightened"),
        "disgusted": ("disgusted", "disgust", "revulsion"),
        "frustrated": ("frustrated", "frustration"),
        "excited": ("excited", "excitement", "thrilled", "enthusiastic"),
    },
    "pitch": {
        "low": ("low", "deep", "low-pitched", "bass", "低沉", "低"),
        "medium": ("medium", "moderate", "average", "mid"),
        "high": ("high", "high-pitched", "shrill", "squeaky", "高"),
    },
    "speed": {
        "slow": ("slow", "slowly", "sluggish", "leisurely", "unhurried", "慢"),
        "normal": ("normal", "moderate", "average", "medium", "regular", "steady"),
        "fast": (
            "fast",
            "quick",
            "quickly",
            "rapid",
            "rapidly",
            "hurried",
            "brisk",
            "speedy",
            "快",
        ),
    },
    "volume": {
        "quiet": ("quiet", "quietly", "soft", "softly", "whispering", "hushed"),
        "normal": ("normal", "moderate", "average"),
        "loud": ("loud", "loudly", "shouting", "booming"),
    },
    "vocal": {
        "laughter": ("laughter", "laugh", "laughing", "giggle", "giggling"),
        "sigh": ("sigh", "sighing"),
        "cough": ("cough", "coughing"),
        "throat clearing": (
            "throat clearing",
            "clearing throat",
            "clears throat",
            "clearing his throat",
            "clearing her throat",
        ),
        "sneeze": ("sneeze", "sneezing"),
        "sniff": ("sniff", "sniffing", "sniffle"),
    },
}
# A mention is negated when one of these words is among the three before it, in the same clause.
NEGATIONS = frozenset(("not", "no", "never", "neither", "nor", "without", "than", "instead"))
NEGATIONS |= {"isnt", "arent", "wasnt", "werent", "dont", "doesnt", "didnt", "cant", "wont"}
# Chinese negation just before a CJK synonym: 不快 "not fast", 不是男性 "not male".
_CJK_NEGATED = re.compile(r"[不没沒非无無](?:是|太|很|够|夠)?$")
_CLAUSE_END = re.compile(r"[.;:!?,()\n]|\bbut\b|\bhowever\b|\balthough\b")
_WORD = re.compile(r"[a-z']+")


def label_space(
    extra: Mapping[str, Mapping[str, Sequence[str]]] | None = None,
) -> dict[str, dict[str, tuple[str, ...]]]:
    """:data:`LABELS` with ``extra`` synonyms (or new dimensions / levels) merged in."""
    space = {dim: dict(levels) for dim, levels in LABELS.items()}
    for dim, levels in (extra or {}).items():
        for level, words in levels.items():
            old = space.setdefault(dim, {}).get(level, (level,))
            space[dim][level] = tuple(dict.fromkeys([*old, *words]))
    return space


def canonical_level(label: str, levels: Mapping[str, Sequence[str]]) -> str | None:
    """The level that ``label`` names exactly ("Quick" → "fast"), or None."""
    label = " ".join(str(label).lower().replace("_", " ").split())
    for level, words in levels.items():
        if label == level or label in words:
            return level
    return None


def asserted_levels(text: str, levels: Mapping[str, Sequence[str]]) -> set[str]:
    """Levels that ``text`` mentions without negating them."""
    text = text.lower().replace("’", "'")
    found = set()
    for level, words in levels.items():
        for word in words:
            if any(not _negated(text, m.start(), cjk) for m, cjk in _mentions(text, word)):
                found.add(level)
                break
    return found


def _mentions(text: str, word: str):
    if CJK.search(word):  # no spaces between Chinese words: a plain substring
        return ((m, True) for m in re.finditer(re.escape(word), text))
    parts = r"[\s-]+".join(map(re.escape, re.split(r"[\s-]+", word)))
    return ((m, False) for m in re.finditer(r"(?<![\w-])" + parts + r"(?![\w-])", text))


def _negated(text: str, start: int, cjk: bool) -> bool:
    if cjk:
        return bool(_CJK_NEGATED.search(text[max(0, start - 3) : start]))
    clause = _CLAUSE_END.split(text[max(0, start - 80) : start])[-1]
    return any(w.replace("'", "") in NEGATIONS for w in _WORD.findall(clause)[-3:])


def _levels_for(
    dimension: str | None, space: dict[str, dict[str, tuple[str, ...]]]
) -> dict[str, tuple[str, ...]] | None:
    return space.get(str(dimension).lower()) if dimension is not None else None


@reward("paralinguistic")
def paralinguistic(
    prompts: list[Any],
    completions: list[Any],
    dimension: str | None = None,
    label_column: str = "label",
    dimension_column: str = "task",
    synonyms: Mapping[str, Mapping[str, Sequence[str]]] | None = None,
    **kwargs: Any,
) -> list[float | None]:
    """1.0 when the answer asserts exactly the labelled level, 0.0 otherwise.

    The dimension is ``dimension`` or the row's ``task`` column; rows of other tasks, and labels
    outside the dimension's levels, get None. An answer naming two levels ("fast or slow") or
    none scores 0.
    """
    space = label_space(synonyms)
    labels = column(kwargs, label_column, "paralinguistic")
    dims = (
        [dimension] * len(completions)
        if dimension
        else column(kwargs, dimension_column, "paralinguistic")
    )
    scores: list[float | None] = []
    for parsed, label, dim in zip(
        completion_fields(completions, kwargs), labels, dims, strict=True
    ):
        levels = _levels_for(dim, space)
        gold = canonical_level(label, levels) if levels and label is not None else None
        if gold is None:
            scores.append(None)
            continue
        scores.append(float(asserted_levels(parsed.answer, levels) == {gold}))
    return scores


@reward("paralinguistic_classifier")
class ParalinguisticClassifier:
    """Check answers against an ``audio-classification`` checkpoint's prediction.

    Args:
        model: path of the classifier; its labels are mapped to levels by ``label_map`` or by the
            synonym sets.
        dimension: the dimension the classifier predicts (e.g. ``"emotion"``).
        source: ``"input"`` classifies the prompt audio (the ``audio`` column); ``"spoken"``
            classifies the spoken reply, made audible by ``detokenizer``.
        compare_to: ``"answer"`` — the level the answer asserts must be the predicted one;
            ``"label"`` — the predicted level must be the row's label (e.g. "say it sadly").
        dimension_column: rows whose column names another dimension get None; None scores all.

    Samples the classifier cannot map, or without audio, get None.
    """

    def __init__(
        self,
        model: str,
        dimension: str,
        source: str = "input",
        compare_to: str = "answer",
        label_column: str = "label",
        dimension_column: str | None = "task",
        label_map: Mapping[str, str] | None = None,
        synonyms: Mapping[str, Mapping[str, Sequence[str]]] | None = None,
        detokenizer: Any = None,
        device: str | int | None = None,
        batch_size: int = 8,
    ):
        from transformers import pipeline  # heavy: only when this reward is built

        if source not in ("input", "spoken") or compare_to not in ("answer", "label"):
            raise ValueError(
                "paralinguistic_classifier: source is 'input' or 'spoken', compare_to 'answer' or 'label'"
            )
        if source == "spoken" and detokenizer is None:
            raise ValueError("paralinguistic_classifier: source 'spoken' needs a detokenizer")
        self.levels = _levels_for(dimension, label_space(synonyms))
        if self.levels is None:
            raise ValueError(
                f"paralinguistic_classifier: unknown dimension {dimension!r} (known: {sorted(label_space(synonyms))})"
            )
        self.pipe = pipeline("audio-classification", model=model, device=device)
        self.dimension, self.source, self.compare_to = dimension.lower(), source, compare_to
        self.label_column, self.dimension_column = label_column, dimension_column
        self.label_map = {k.lower(): v for k, v in (label_map or {}).items()}
        self.detokenizer = resolve(detokenizer)
        self.batch_size = batch_size

    def __call__(
        self, prompts: list[Any], completions: list[Any], **kwargs: Any
    ) -> list[float | None]:
        n = len(completions)
        parsed = completion_fields(completions, kwargs)
        dims = kwargs.get(self.dimension_column) if self.dimension_column else None
        rows = [i for i in range(n) if dims is None or str(dims[i]).lower() == self.dimension]
        if self.source == "input":
            audio = column(kwargs, "audio", "paralinguistic_classifier")
            rates = sample_rates(kwargs, n)
            rows = [i for i in rows if audio[i] is not None and len(audio[i])]
            waveforms = [to_mono(audio[i], rates[i]) for i in rows]
        else:
            rows = [i for i in rows if parsed[i].audio_codes]
            waveforms = [to_mono(*self.detokenizer(parsed[i].audio_codes)) for i in rows]
        predictions = self.pipe(waveforms, top_k=1, batch_size=self.batch_size) if waveforms else []
        labels = (
            column(kwargs, self.label_column, "paralinguistic_classifier")
            if self.compare_to == "label"
            else None
        )
        scores: list[float | None] = [None] * n
        for i, prediction in zip(rows, predictions, strict=True):
            top = prediction[0]["label"] if isinstance(prediction, list) else prediction["label"]
            predicted = self.label_map.get(str(top).lower()) or canonical_level(top, self.levels)
            if predicted is None:
                continue
            if labels is not None:
                gold = canonical_level(labels[i], self.levels) if labels[i] is not None else None
                scores[i] = None if gold is None else float(predicted == gold)
            else:
                scores[i] = float(asserted_levels(parsed[i].answer, self.levels) == {predicted})
        return scores
