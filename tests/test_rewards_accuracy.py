"""Accuracy on multiple-choice and short exact answers."""

from __future__ import annotations

import pytest

from rewards.accuracy import accuracy

CHOICES = ["dog barking", "car horn", "male speaker"]


@pytest.mark.parametrize(
    ("answer", "label", "expected"),
    [
        ("B", "B", 1.0),
        ("(B)", "B", 1.0),
        ("B. car horn", "B", 1.0),
        ("The answer is B.", "B", 1.0),
        ("Answer: (C)", "C", 1.0),
        ("A", "B", 0.0),
        ("car horn", "B", 1.0),  # option text for a letter label
        ("Car horn!", "car horn", 1.0),  # normalised exact match
        ("B", "car horn", 1.0),  # letter for a text label
        ("A", "car horn", 0.0),
        ("A dog barks", "B", 0.0),  # an article is not a letter
        ("the answer is a dog", "A", 0.0),
        ("", "B", 0.0),
        ("<answer>C</answer>", "C", 1.0),
        ("I think <answer>A</answer> no wait <answer>C</answer>", "C", 1.0),
        ("3", "three", 1.0),
        ("今天", "今天", 1.0),
        ("x", None, None),
        ("x", "  ", None),
    ],
)
def test_accuracy_cases(answer, label, expected):
    completion = "<think>\nLet me listen.\n</think>\n\n" + answer
    assert accuracy(None, [completion], label=[label], choices=[CHOICES]) == [expected]


def test_accuracy_columns_and_containment():
    completions = ["</think>The speaker is male.", "</think>male"]
    assert accuracy(None, completions, label=["male"] * 2) == [0.0, 1.0]
    assert accuracy(None, completions, label=["male"] * 2, contains=True) == [1.0, 1.0]
    assert accuracy(None, ["</think>female"], label=["male"], contains=True) == [0.0]
    assert accuracy(None, completions, solution=["male"] * 2) == [0.0, 1.0]  # TRL's column
    assert accuracy(None, completions, answer_key=["male"] * 2, label_column="answer_key") == [
        0.0,
        1.0,
    ]
    with pytest.raises(KeyError, match="no column 'label'"):
        accuracy(None, completions, gold=["male"] * 2)
    assert accuracy(None, ["B"], label=["B"]) == [1.0]  # no choices, no think block
