"""`rlhf eval`: the figures' meaning on hand-made rollouts, and the JSON shape end to end."""

import json
from typing import ClassVar

import numpy as np
import pytest

from rlhf.cli import main
from rlhf.data.grammar import corpus
from rlhf.evaluate import ablate_audio, evaluate, score
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
    assert results["aloud"] == 0.0  # every text question answered in text
    aloud = [*rollouts[:4], _rollout(f"x</think>\n\n{spoken}", "x", "the cat"), rollouts[5]]
    assert score(samples, aloud, audio_pad_code=PAD)["aloud"] == pytest.approx(1 / 5)
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


def test_demo_evaluates_in_a_process_of_its_own_as_in_this_one(tiny, tmp_path, capsys):
    """The demo's SFT evaluation runs beside GRPO: the same command, the same report."""
    from rlhf.demo import BackgroundEval
    from rlhf.demo import evaluate as demo_evaluate

    model, data = tiny / "model", str(tiny / "data")
    job = BackgroundEval(tmp_path, "side", model, data, threads=1)
    here = demo_evaluate(tmp_path, "here", model, data)
    there = job.report()
    assert "gender accuracy" in (tmp_path / "eval_side.log").read_text()
    assert "gender accuracy" in capsys.readouterr().out
    here.pop("seconds"), there.pop("seconds")
    assert there == here and "silence" in there["ablations"]


def test_evaluate_function_limits_samples(tiny):
    results = evaluate(tiny / "model", tiny / "data", max_samples=3, batch_size=2, max_new_tokens=4)
    assert results["n"] == 3
    assert sum(results["counts"].values()) == 3
    chosen = evaluate(tiny / "model", tiny / "data", tasks=["pitch", "speed"], max_new_tokens=4)
    assert chosen["counts"] == {"pitch": 2, "speed": 2}


def test_ablations_keep_length_and_shuffle_within_a_question():
    rng = np.random.default_rng(0)
    samples = [_sample(task, str(i)) for i, task in enumerate(["gender"] * 3 + ["speed"] * 2)]
    for s in samples:
        s.audio = [rng.standard_normal(int(rng.integers(1600, 3200))).astype(np.float32)]
    silent, donors = ablate_audio(samples, "silence")
    assert donors is None
    assert [len(s.audio[0]) for s in silent] == [len(s.audio[0]) for s in samples]
    assert all(not s.audio[0].any() for s in silent)
    noisy, _ = ablate_audio(samples, "noise")
    for original, s in zip(samples, noisy, strict=True):
        assert len(s.audio[0]) == len(original.audio[0])
        assert np.std(s.audio[0]) == pytest.approx(np.std(original.audio[0]), rel=0.1)
        assert not np.allclose(s.audio[0], original.audio[0])
    shuffled, donors = ablate_audio(samples, "shuffle")
    for i, (s, donor) in enumerate(zip(shuffled, donors, strict=True)):
        assert donor != i and samples[donor].columns["task"] == s.columns["task"]
        assert s.audio[0] is samples[donor].audio[0] and s.columns == samples[i].columns
    assert sorted(donors) == list(range(5))
    with pytest.raises(ValueError, match="unknown ablation 'mute'"):
        ablate_audio(samples, "mute")


class _ListeningEngine:
    """Answers the label of the clip it hears (looked up by the clip's bytes), else "male"."""

    labels: ClassVar[dict[tuple[bytes, str], str]] = {}

    def __init__(self, policy, batch_size):
        pass

    def generate(self, samples, n, sampling):
        answers = [
            self.labels.get((s.audio[0].tobytes(), s.columns["task"]), "male") for s in samples
        ]
        return [_rollout(f"x</think>\n\n{a}.", "x", f"{a}.") for a in answers]


def test_ablation_figures_show_a_policy_that_listens(tiny, monkeypatch, tmp_path, capsys):
    import rollouts.engine
    from rlhf.data.loading import load_prompt_dataset, row_to_sample

    data = tmp_path / "data"
    args = ["--num-clips", "2", "--test-clips", "8", "--codebook-size", "8", "--workers", "1"]
    assert main(["make-data", str(data), *args]) == 0
    test = load_prompt_dataset(data / "data", "test")
    rows = [row_to_sample(row, i) for i, row in enumerate(test)]
    _ListeningEngine.labels = {
        (s.audio[0].tobytes(), s.columns["task"]): s.columns["label"] for s in rows
    }
    monkeypatch.setattr(rollouts.engine, "LocalEngine", _ListeningEngine)
    out = tmp_path / "eval.json"
    args = ["--model", str(tiny / "model"), "--data", str(data), "--json", str(out)]
    assert main(["eval", *args, "--ablate", "silence", "noise", "shuffle"]) == 0
    table = capsys.readouterr().out
    assert "silence" in table and "heard" in table
    results = json.loads(out.read_text())
    assert results["accuracy_mean"] == 1.0
    speakers = results["speakers"]
    assert speakers["n"] > 1 and speakers["unseen"] == speakers["n"]
    assert f"{speakers['n']} of {speakers['n']} " in table
    males = [s.columns["gender"] == "male" for s in rows if s.columns["task"] == "gender"]
    for name in ("silence", "noise"):
        assert results["ablations"][name]["paralinguistic"]["gender"] == np.mean(males)
        assert results["ablations"][name]["asr"]["wer"] > 0.5
    shuffle = results["ablations"]["shuffle"]
    assert shuffle["donor"]["accuracy_mean"] == 1.0  # it answers what it hears
    assert shuffle["donor"]["asr"]["wer"] == 0.0
    assert shuffle["asr"]["wer"] > 0.5 and shuffle["accuracy_mean"] < 1.0


def test_demo_table_shows_ablations_unseen_speakers_and_spoken_length():
    from rich.console import Console

    from rlhf.demo import compare

    def report(accuracy: float, silence: float, codes: float) -> dict:
        return {
            "paralinguistic": {"gender": accuracy, "pitch": accuracy, "speed": accuracy},
            "accuracy_mean": accuracy,
            "asr": {"wer": 0.5, "cer": 0.3},
            "speakers": {"n": 9, "unseen": 9},
            "ablations": {"silence": {"accuracy_mean": silence}},
            "spoken": {"ta4_ok": 0.9, "audio_codes_mean": codes},
        }

    console = Console(width=120, record=True)
    console.print(compare(report(0.7, 0.4, 44.0), report(0.8, 0.35, 217.0)))
    text = console.export_text()
    assert "9 of 9 speakers" in text
    assert "silence" in text and "-0.050" in text
    assert "spoken audio codes" in text and "+173.000" in text
