"""spoken_answer: TA4 shape, the text stream against the reply, and the number of audio codes."""

from __future__ import annotations

import pytest

from rewards import get_reward
from rewards.spoken import spoken_answer
from tests.test_rewards_format import ta4

REPLY = "The speaker is male."
WORDS = ["The", " speaker", " is", " male", "."]


def _score(completion: str, spoken: bool = True, codes: int = 12) -> float | None:
    (score,) = spoken_answer(
        [None],
        [f"ok</think>\n\n{completion}"],
        label=[REPLY],
        target_audio_codes=[list(range(codes))],
        spoken=[spoken],
    )
    return score


def test_the_intended_reply_at_the_intended_length_scores_one():
    assert _score(ta4(WORDS, range(12))) == 1.0
    assert get_reward("spoken_answer") is not None


def test_text_stream_and_length_each_count_half():
    assert _score(ta4(["The", " speaker", " is", " female", "."], range(12))) == pytest.approx(
        (1 - 1 / 4 + 1) / 2
    )  # one word of four wrong
    assert _score(ta4(WORDS, range(60))) == pytest.approx((1 + 12 / 60) / 2)  # five times longer
    assert _score(ta4(WORDS, range(6))) == pytest.approx((1 + 6 / 12) / 2)


def test_a_broken_or_missing_spoken_answer_scores_zero_and_text_rows_none():
    assert _score(REPLY) == 0.0  # answered in text where speech was asked for
    assert _score("<tts_start>The<audio_1><audio_2><audio_3><tts_end>") == 0.0  # 3 codes a chunk
    assert _score(REPLY, spoken=False) is None
    (no_length,) = spoken_answer(
        [None], [ta4(WORDS, range(40))], label=[REPLY], codes_column=None, spoken=[True]
    )
    assert no_length == 1.0
