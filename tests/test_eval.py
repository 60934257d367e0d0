"""`rlhf eval`: the figures' meaning on hand-made rollouts, and the JSON shape end to end."""

import json

import numpy as np
import pytest

from rlhf.cli import main
from rlhf.data.grammar import corpus
from rlhf.evaluate import evaluate, score
from rollouts.tiny import make_tiny
from rollouts.types import PromptSample, Rollout

PAD = 16  # the tiny model's audio pad code (16 audio codes)


def _sample(task: str, label: str, spoken: bool = False) -> PromptSample:
    return PromptSample(
        id=f"{task}-{label}",
        messages=[{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "?"}]}],
        audio=[np.zeros(1600, dtype=np.float32)],
        columns={"task": task, "label": label},
        spoken=spoken,
    )


def _rollout(text: str, think: str, answer: str, finish: str = "stop", **extra) -> Rollout:
    fields = {"spoken_text": "", "audio_codes": [], **extra}
    return Rollout(
        prompt_id="x", group=0, sample_index=0, prompt_ids=[], completion_ids=[1, 2, 3],
        logprobs=[], loss_mask=[], text=text, think=think, answer=answer, tool_calls=[],
        finish_reason=finish, **fields,
    )  # fmt: skip


def test_score_on_known_answers():
    samples = [
        _sample("gender", "male"),
        _sample("gender", "female"),
        _sample("pitch", "high"),
        _sample("speed", "fast"),
        _sample("transcribe", "The cat sat on the mat."),
        _sample("spoken", "The speaker is male.", spoken=True),
    ]
    spoken = "<tts_start>The<audio_1><audio_2><audio_3><audio_4> speaker is male.<audio_5>"
    spoken += f"<audio_{PAD}><audio_{PAD}><audio_{PAD}><tts_end>"
    rollouts = [
        _rollout("one two</think>\n\nThe speaker is male.", "one two", "The speaker is male."),
        _rollout("one</think>\n\nMale.", "one", "Male."),  # wrong
        _rollout("a b c</think>\n\nThe pitch is not low, it is high.", "a b c", "It is high."),
        _rollout("a b c d", "a b c d", "", finish="length"),  # never answered
        _rollout("x</think>\n\nthe cat sat on a mat", "x", "the cat sat on a mat"),
        _rollout(
            f"y</think>\n\n{spoken}",
            "y",
            "The speaker is male.",
            spoken_text="The speaker is male.",
            audio_codes=[1, 2, 3, 4, 5],
        ),
    ]
    results = score(samples, rollouts, audio_pad_code=PAD)
    assert results["n"] == 6
    assert results["paralinguistic"] == {"gender": 0.5, "pitch": 1.0, "speed": 0.0}
    assert results["predicted"] == {
        "gender": {"male": 2},
        "pitch": {"high": 1},
        "speed": {"none": 1},
    }
    assert results["asr"]["wer"] == pytest.approx(1 / 6)  # "the" → "a"
    assert results["asr"]["cer"] == pytest.approx(3 / 22)  # "the" → "a": 3 characters
    assert results["think_words_mean"] == pytest.approx((2 + 1 + 3 + 4 + 1 + 1) / 6)
    assert results["format_ok"] == pytest.approx(5 / 6)  # the unfinished one
    assert results["format_ok_by_task"]["speed"] == 0.0
    assert results["format_ok_by_task"]["spoken"] == 1.0
    assert results["spoken"]["exact"] == 1.0
    assert results["counts"] == {"gender": 2, "pitch": 1, "speed": 1, "spoken": 1, "transcribe": 1}
    json.dumps(results)  # plain JSON types only


def test_a_missing_task_gives_none_not_a_number():
    results = score(
        [_sample("gender", "male")], [_rollout("a</think>\n\nMale.", "a", "Male.")], PAD
    )
    assert results["paralinguistic"]["pitch"] is None
    assert results["asr"] == {"wer": None, "cer": None}


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    args = ["--num-clips", "2", "--test-clips", "2", "--codebook-size", "8", "--workers", "1"]
    assert main(["make-data", str(root / "data"), *args]) == 0
    make_tiny(root / "model", corpus().splitlines(), num_audio_codes=16)
    return root


def test_eval_writes_the_json_shape(tiny, tmp_path, capsys):
    out = tmp_path / "eval.json"
    args = ["--model", str(tiny / "model"), "--data", str(tiny / "data"), "--json", str(out)]
    assert main(["eval", *args, "--batch-size", "4", "--max-new-tokens", "12"]) == 0
    assert "gender accuracy" in capsys.readouterr().out
    results = json.loads(out.read_text())
    assert results["n"] == 10  # 2 clips × 5 questions
    assert set(results["paralinguistic"]) == {"gender", "pitch", "speed"}
    for value in results["paralinguistic"].values():
        assert 0.0 <= value <= 1.0
    assert set(results["asr"]) == {"wer", "cer"}
    assert results["asr"]["wer"] >= 0.0
    assert isinstance(results["think_words_mean"], float)
    assert 0.0 <= results["format_ok"] <= 1.0
    assert sum(results["counts"].values()) == 10


def test_evaluate_function_limits_samples(tiny):
    results = evaluate(tiny / "model", tiny / "data", max_samples=3, batch_size=2, max_new_tokens=4)
    assert results["n"] == 3
    assert sum(results["counts"].values()) == 3
