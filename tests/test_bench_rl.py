"""`rlhf bench rl`'s summary: figures of eval JSONs gathered per seed, mean and range over seeds."""

from itertools import pairwise
from pathlib import Path

import pytest

from rlhf.bench_rl import accuracies, over_seeds, table
from rlhf.demo import recipe


def _report(gender, pitch, speed, silence):
    mean = (gender + pitch + speed) / 3
    return {
        "paralinguistic": {"gender": gender, "pitch": pitch, "speed": speed},
        "accuracy_mean": mean,
        "ablations": {"silence": {"accuracy_mean": silence}},
    }


def test_gain_is_per_seed_against_the_one_sft_start():
    sft = accuracies(_report(0.9, 0.6, 0.3, 0.45))
    seeds = [accuracies(_report(0.9, 0.9, 0.3, 0.44)), accuracies(_report(0.9, 0.63, 0.3, 0.5))]
    summary = over_seeds(sft, seeds)
    assert summary["gain"]["min"] == pytest.approx(0.01)
    assert summary["gain"]["max"] == pytest.approx(0.1)
    assert summary["gain"]["mean"] == pytest.approx(0.055)
    assert summary["grpo"]["pitch"] == pytest.approx({"mean": 0.765, "min": 0.63, "max": 0.9})
    assert summary["grpo"]["silence"] == pytest.approx({"mean": 0.47, "min": 0.44, "max": 0.5})


def test_table_names_the_ablations_and_shows_the_range():
    sft = accuracies(_report(0.9, 0.6, 0.3, 0.45))
    seeds = {0: accuracies(_report(0.9, 0.9, 0.3, 0.44))}
    results = {"sft": sft, "seeds": seeds, **over_seeds(sft, list(seeds.values()))}
    rows = table(results).columns[0]._cells
    assert "mean, audio → silence" in rows and "gain in mean" in rows
    assert table(results).columns[2]._cells[-1] == "+0.100 [+0.100, +0.100]"


def test_ppo_stage_one_example_is_a_valid_recipe_with_a_20_word_budget_and_accuracy():
    from rlhf.bench_rl import PPO_THINK_TINY
    from rlhf.config import RLConfig, load_config
    from rlhf.demo import recipe

    config = load_config(RLConfig, recipe("step_audio2_ppo_think.yaml"), PPO_THINK_TINY)
    assert config.algorithm.name == "ppo"
    assert config.rewards == [
        {"name": "think_length", "max_words": 20},
        {"name": "paralinguistic"},
    ]
    assert config.data.tasks == ["gender", "pitch", "speed"]
    assert (config.run.steps, config.optim.lr) == (40, 1e-4)


def test_jobs_run_their_commands_in_order_and_a_failure_names_its_log(tmp_path):
    from rlhf.demo import Job, run_jobs

    ok = Job("ok", [["eval", "--help"], ["train", "--help"]])
    run_jobs([ok], tmp_path, workers=2, threads=1)
    log = (tmp_path / "ok.log").read_text()
    assert log.index("$ rlhf eval --help") < log.index("$ rlhf train --help")
    assert "usage: rlhf eval" in log and "usage: rlhf train" in log

    broken = Job("broken", [["train", str(tmp_path / "missing.yaml")], ["eval", "--help"]])
    with pytest.raises(SystemExit, match=r"broken\.log"):
        run_jobs([ok, broken], tmp_path, workers=2, threads=1)
    log = (tmp_path / "broken.log").read_text()
    assert "missing.yaml" in log and "usage: rlhf eval" not in log  # stopped at the failure


def test_the_bench_runs_every_seed_and_recipe_from_the_one_sft_policy(tmp_path):
    from rlhf.bench_rl import jobs

    todo = jobs(tmp_path, tmp_path / "sft", "data", seeds=[0, 1], skip=["asr"])
    assert [job.name for job in todo] == [
        "eval_sft",
        "grpo_seed0",
        "grpo_seed1",
        "grpo_spoken",
        "ppo_think",
    ]
    trains = [argv for job in todo for argv in job.commands if argv[0] == "train"]
    speak, _, spoken, _ = next(job for job in todo if job.name == "grpo_spoken").commands
    assert all(
        f"model.path={tmp_path / 'sft'}" in argv for argv in [*trains, speak] if argv != spoken
    )
    assert speak[:2] == ["sft", recipe("tiny_sft_speak.yaml")]  # the spoken recipe needs speech
    assert f"model.path={tmp_path / 'speak' / 'final'}" in spoken
    assert next(argv for argv in trains if "run.seed=1" in argv)[1].endswith("tiny_grpo.yaml")


def test_commands_are_printed_as_typed_with_their_brackets(capsys):
    from rlhf.demo import show

    show("rlhf train r.yaml 'data.tasks=[gender,pitch]' 'rewards=[{name: x}]'")
    printed = capsys.readouterr().out
    assert "'data.tasks=[gender,pitch]' 'rewards=[{name: x}]'" in printed


@pytest.mark.parametrize("arch", ["step-audio-2", "qwen2-audio"])
def test_each_sft_stage_of_the_demo_starts_from_the_one_before(arch, tmp_path, monkeypatch):
    import rlhf.demo as demo

    stages = []
    monkeypatch.setattr(demo, "rlhf", lambda *argv: None)
    monkeypatch.setattr(demo, "sft", lambda path, *overrides, **_: stages.append((path, overrides)))
    _, last = demo.prepare(tmp_path, arch=arch)

    names = [Path(path).name for path, _ in stages]
    paths = [dict(o.split("=", 1) for o in overrides) for _, overrides in stages]
    assert paths[0]["model.path"] == str(tmp_path / "tiny")
    for before, after in pairwise(paths):
        assert after["model.path"] == str(Path(before["run.output_dir"]) / "final")
    assert last == Path(paths[-1]["run.output_dir"]) / "final"
    assert names == ["tiny_sft_listen.yaml", "tiny_sft.yaml"]
    if arch != "step-audio-2":  # a family that answers in text only learns no spoken replies
        assert paths[1]["train_on"] == "text" and "spoken" not in paths[1]["data.tasks"]


def test_the_speaking_stage_keeps_every_question_beside_the_spoken_rows():
    """Spoken rows alone made the tiny policy answer 94 % of text questions aloud: the speaking
    stage keeps the other tasks in its mix, the spoken rows only repeated, on the SFT set."""
    from rlhf.config import SFTConfig, load_config

    tuned = load_config(SFTConfig, recipe("tiny_sft.yaml"))
    speak = load_config(SFTConfig, recipe("tiny_sft_speak.yaml"))
    assert speak.data.tasks is None and speak.data.task_repeats == {"spoken": 8}
    assert speak.data.where == tuned.data.where and speak.data.think
    assert speak.train_on == "both"
