"""`rlhf rewards score` on temp files, and the README's reward example, run as written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from rlhf.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def write_jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")


def test_score_command_prints_a_table_and_writes_per_sample_scores(tmp_path, capsys):
    spec = tmp_path / "rewards.yaml"
    spec.write_text(
        "- {name: think_format}\n"
        "- {name: think_length, max_words: 5, weight: 0.2}\n"
        "- {name: paralinguistic, where: {task: [gender, speed]}}\n"
    )
    data = tmp_path / "samples.jsonl"
    write_jsonl(
        data,
        [
            {
                "id": "a",
                "completion": "<think>Deep voice.</think>A man.",
                "task": "gender",
                "label": "male",
            },
            "",
            {
                "id": "b",
                "completions": ["</think>Fast.", "no think, slow"],
                "task": "speed",
                "label": "slow",
            },
            {
                "id": "c",
                "completion": [{"role": "assistant", "content": "</think>hi"}],
                "task": "transcribe",
            },
        ],
    )
    out = tmp_path / "scores.jsonl"
    assert (
        main(
            [
                "rewards",
                "score",
                "--rewards",
                str(spec),
                "--completions",
                str(data),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    for word in ("think_format", "think_length", "paralinguistic", "applicable", "errors", "total"):
        assert word in printed
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["id"], r["line"], r["index"]) for r in rows] == [
        ("a", 1, 0),
        ("b", 3, 0),
        ("b", 3, 1),
        ("c", 4, 0),
    ]
    assert [r["rewards"]["paralinguistic"] for r in rows] == [1.0, 0.0, 1.0, None]
    assert [r["rewards"]["think_format"] for r in rows] == [1.0, 0.0, 0.0, 0.0]
    assert rows[0]["total"] == pytest.approx(2.2)
    # Default output path: next to the input.
    assert main(["rewards", "score", "--rewards", str(spec), "--completions", str(data)]) == 0
    assert (tmp_path / "samples.scores.jsonl").exists()


def test_score_command_reports_bad_input_with_file_and_line(tmp_path, capsys):
    spec = tmp_path / "rewards.yaml"
    spec.write_text("rewards:\n  - {name: think_format}\n")
    data = tmp_path / "bad.jsonl"
    write_jsonl(data, [{"completion": "a"}, "{not json"])
    args = ["rewards", "score", "--rewards", str(spec), "--completions", str(data)]
    assert main(args) == 2
    assert f"{data}:2: invalid JSON" in capsys.readouterr().err
    write_jsonl(data, [{"completion": "a"}, {"text": "b"}])
    assert main(args) == 2
    assert f"{data}:2: no 'completion'" in capsys.readouterr().err
    spec.write_text("- {name: thinkformat}\n")
    assert main(args) == 2
    assert "did you mean think_format" in capsys.readouterr().err


def test_reward_function_example_in_readme_runs():
    text = README.read_text()
    section = re.search(r"^## Writing a reward function\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert section, "README.md has no '## Writing a reward function' section"
    code = re.search(r"```python\n(.*?)```", section.group(1), re.S)
    assert code, "the section has no ```python example"
    assert len([line for line in code.group(1).splitlines() if line.strip()]) <= 12
    exec(compile(code.group(1), "README.md", "exec"), {})
