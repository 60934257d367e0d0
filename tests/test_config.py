"""Recipes are refused when they load, naming key, source, choices; `--print-config`;
`--dry-run` and the checks run before any weights load; one `load_split`."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from rlhf import preflight
from rlhf.cli import main
from rlhf.config import (
    LR_SCHEDULERS,
    ConfigError,
    RewardModelConfig,
    RLConfig,
    SFTConfig,
    config_to_yaml,
    load_config,
)
from rlhf.data.loading import DatasetError, MissingSplitError, load_prompt_dataset, load_split

RECIPES = Path(__file__).parent.parent / "recipes"
GRPO = RECIPES / "tiny_grpo.yaml"
SFT = RECIPES / "tiny_sft.yaml"


def refused(overrides: list[str], schema: type = RLConfig, recipe: Path = GRPO) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(schema, recipe, overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------ closed sets of values
@pytest.mark.parametrize(
    ("override", "choices", "nearest"),
    [
        ("algorithm.name=PPO", "grpo, ppo", "ppo"),
        ("algorithm.kl_in=rewards", "loss, reward", "reward"),
        ("model.dtype=bf16", "float32, bfloat16", "bfloat16"),
        ("algorithm.advantage=GRPO", "grpo, dr_grpo, rloo", "grpo"),
        ("algorithm.scale_rewards=groups", "group, batch, none", "group"),
        ("algorithm.loss_aggregation=token-mean", "token_mean, seq_mean, dr_grpo", "token_mean"),
        ("algorithm.importance_sampling=sequences", "token, sequence", "sequence"),
        ("algorithm.kl_estimator=K3", "k1, k3", "k3"),
        ("rollout.engine=Ray", "local, ray", "ray"),
        ("rollout.train_on=txt", "text, audio, both", "text"),
        ("rollout.ray.placement_strategy=pack", "PACK, SPREAD", "PACK"),
        ("optim.lr_scheduler=cosin", "linear, cosine", "cosine"),
        ("run.report_to=wandbb", "tensorboard, wandb, trackio, all, none", "wandb"),
        ("data.validate=yes", "auto, always, never", None),
    ],
)
def test_enumerated_values_are_refused_with_choices_and_nearest(override, choices, nearest):
    message = refused([override])
    key = override.split("=")[0]
    assert message.startswith(f"command line override '{override}': {key}: ")
    assert choices in message
    if nearest:
        assert f"did you mean '{nearest}'?" in message


def test_sft_train_on_is_checked_too():
    message = refused(["train_on=Both"], SFTConfig, SFT)
    assert "train_on: 'Both' is not one of text, audio, both; did you mean 'both'?" in message


def test_a_bad_value_in_the_file_names_the_file(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(GRPO.read_text().replace("name: grpo", "name: PPO"))
    message = refused([], recipe=recipe)
    assert message.startswith(f"{recipe}: algorithm.name: 'PPO'")


# ------------------------------------------------------------------ runs that could not learn
@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("rollout.num_generations=1", "at least 2"),
        ("rollout.sampling.max_new_tokens=0", "must be >= 1"),
        ("rewards=[]", "RL needs at least one reward"),
        ("rollout.prompts_per_step=0", "must be >= 1"),
        ("optim.micro_batch_size=0", "must be >= 1"),
        ("run.steps=0", "must be >= 1"),
        ("algorithm.beta=-0.1", "must be >= 0"),
        ("algorithm.clip_low=-0.2", "must be >= 0"),
        ("algorithm.difficulty_band=[0.6,0.3]", "0 <= lo <= hi <= 1"),
        ("algorithm.difficulty_band=[0.1,1.5]", "0 <= lo <= hi <= 1"),
        ("rollout.sampling.top_p=0", "must be > 0"),
        ("optim.lr=0", "must be > 0"),
        ("data.max_samples=0", "must be >= 1"),
    ],
)
def test_values_out_of_range_are_refused(override, says):
    message = refused([override])
    assert message.startswith(f"command line override '{override}': {override.split('=')[0]}")
    assert says in message


def test_one_generation_is_fine_for_ppo():
    config = load_config(RLConfig, GRPO, ["algorithm.name=ppo", "rollout.num_generations=1"])
    assert config.rollout.num_generations == 1


def test_a_type_error_names_the_override_in_one_line():
    message = refused(["rollout.num_generations=abc"])
    assert message.startswith("command line override 'rollout.num_generations=abc'")
    assert "could not be converted to Integer" in message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("wandb", ["wandb"]),
        ("[wandb,tensorboard]", ["wandb", "tensorboard"]),
        ("all", ["all"]),
        ("none", []),
    ],
)
def test_report_to_takes_trl_forms(value, expected):
    assert load_config(RLConfig, GRPO, [f"run.report_to={value}"]).run.report_to == expected


# ------------------------------------------------------------------ rewards resolved at load
def test_an_unknown_reward_names_the_nearest_registered_one():
    message = refused(["rewards=[{name: think_lenght}]"])
    assert "rewards[0]: unknown reward 'think_lenght'; did you mean think_length" in message


def test_a_bad_reward_parameter_is_named():
    message = refused(["rewards=[{name: think_length, max_word: 3}]"])
    assert "reward 'think_length' has no parameter 'max_word'; did you mean 'max_words'?" in message


def test_a_reward_entry_without_a_name_is_refused(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(GRPO.read_text().split("rewards:")[0] + "rewards:\n  - {weight: 1.0}\n")
    assert refused([], recipe=recipe).startswith(f"{recipe}: rewards[0]: missing 'name'")


# ------------------------------------------------------------------ defaults and help texts
def test_rl_samples_on_policy_by_default_and_inference_keeps_step_audio_2_settings():
    from rollouts.types import SamplingParams

    rl = RLConfig().rollout.sampling
    assert (rl.top_p, rl.top_k, rl.repetition_penalty) == (1.0, 0, 1.0)
    served = SamplingParams()
    assert (served.top_p, served.repetition_penalty) == (0.9, 1.05)


def _fields(schema, prefix=""):
    for f in dataclasses.fields(schema):
        default = f.default_factory() if callable(f.default_factory) else f.default
        yield f"{prefix}{f.name}", f
        if dataclasses.is_dataclass(default):
            yield from _fields(type(default), f"{prefix}{f.name}.")


@pytest.mark.parametrize("schema", [RLConfig, SFTConfig, RewardModelConfig])
def test_every_key_has_a_help_text(schema):
    missing = [key for key, f in _fields(schema) if not f.metadata.get("help")]
    assert missing == []
    dtype = dict(_fields(schema))["model.dtype"]
    assert "COMPUTE dtype" in dtype.metadata["help"] and "float32" in dtype.metadata["help"]


def test_lr_schedulers_are_transformers_scheduler_names():
    from transformers.trainer_utils import SchedulerType

    assert set(LR_SCHEDULERS) <= {s.value for s in SchedulerType}


@pytest.mark.parametrize(
    ("command", "recipe", "schema"), [("train", GRPO, RLConfig), ("sft", SFT, SFTConfig)]
)
def test_print_config_prints_the_resolved_recipe_with_help(command, recipe, schema, capsys):
    assert main([command, str(recipe), "optim.lr=0.5", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "# COMPUTE dtype" in out
    printed = yaml.safe_load(out)
    assert printed["optim"]["lr"] == 0.5
    config = load_config(schema, recipe, ["optim.lr=0.5"])
    assert printed == yaml.safe_load(config_to_yaml(config, comments=False))
    assert printed["model"]["path"] == config.model.path


# ------------------------------------------------------------------ checks before weights load
def test_a_missing_model_path_says_so_without_a_hub_error(tmp_path):
    with pytest.raises(ConfigError, match=r"model.path: .*/nope/final: no such folder$"):
        preflight.check_model_path("model.path", str(tmp_path / "nope" / "final"))


@pytest.mark.parametrize("command", ["train", "filter"])
def test_rlhf_with_a_missing_model_is_one_line_exit_2(command, tmp_path, capsys):
    missing = tmp_path / "runs" / "sft" / "final"
    args = [command, str(GRPO), f"model.path={missing}", f"run.output_dir={tmp_path / 'r'}"]
    assert main([*args, *(["--out", str(tmp_path / "o")] if command == "filter" else [])]) == 2
    assert (
        capsys.readouterr().err == f"rlhf {command}: error: model.path: {missing}: no such folder\n"
    )


def test_a_hub_id_missing_from_the_offline_cache_is_refused(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="not-an-org/no-such-model: no such local folder"):
        preflight.check_model_path("model.path", "not-an-org/no-such-model")


def test_a_folder_without_config_json_is_not_a_checkpoint(tmp_path):
    with pytest.raises(ConfigError, match=r"has no config\.json"):
        preflight.check_model_path("model.path", str(tmp_path))


def test_an_output_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "out").write_text("")
    config = load_config(RLConfig, GRPO, [f"run.output_dir={tmp_path / 'out'}"])
    with pytest.raises(ConfigError, match=r"run\.output_dir: .* is a file"):
        preflight.check_output_dir(config.run)
    config = load_config(RLConfig, GRPO, [f"run.output_dir={tmp_path / 'out' / 'run'}"])
    with pytest.raises(ConfigError, match=r"cannot be created: .* is a file"):
        preflight.check_output_dir(config.run)


def test_a_read_only_output_dir_is_refused(tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    if os.geteuid() == 0:  # root writes anywhere: let the folder answer as it would to a user
        access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: access(p, mode) and Path(p) != locked)
    config = load_config(RLConfig, GRPO, [f"run.output_dir={locked / 'run'}"])
    with pytest.raises(ConfigError, match=r"cannot be written: .* is read-only"):
        preflight.check_output_dir(config.run)


def test_ray_engine_without_ray_names_the_extra(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "ray" else find_spec(name, *a)
    )
    config = load_config(RLConfig, GRPO, ["rollout.engine=ray"])
    with pytest.raises(
        ConfigError, match=r"rollout.engine=ray needs Ray: pip install 'speech-rlhf\[ray\]'"
    ):
        preflight.check_extras(config)


def test_importing_ray_code_without_ray_names_the_extra():
    code = "import sys; sys.modules['ray'] = None\nimport rewards.remote"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode != 0
    assert "MissingExtraError: ray is not installed; pip install 'speech-rlhf[ray]'" in out.stderr


# ------------------------------------------------------------------ --dry-run: every row
def _wav(path: Path, seconds: float = 0.3) -> str:
    t = np.arange(int(seconds * 16_000)) / 16_000
    sf.write(path, 0.3 * np.sin(2 * np.pi * 220 * t), 16_000)
    return path.name


@pytest.fixture(scope="module")
def model_config_dir(tmp_path_factory):
    """A folder holding only a Step-Audio 2 config.json: all `--dry-run` reads of a model."""
    from rollouts.modeling import StepAudio2Config

    out = tmp_path_factory.mktemp("model")
    StepAudio2Config().save_pretrained(out)
    return out


def _prompts(folder: Path, bad: set[int], rows: int = 6) -> Path:
    folder.mkdir()
    lines = []
    for i in range(rows):
        if i in bad:
            (folder / f"{i}.wav").write_bytes(b"not audio")
        else:
            _wav(folder / f"{i}.wav")
        lines.append(
            {
                "id": f"clip{i}",
                "task": "gender",
                "speaker": "en-us+f1",  # one the SFT recipe's data.where keeps
                "prompt": "Male or female?",
                "audio": f"{i}.wav",
            }
        )
    path = folder / "prompts.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def _dry_run(command, recipe, data, model, out):
    overrides = [f"model.path={model}", f"data.path={data}", f"run.output_dir={out}"]
    return main([command, str(recipe), *overrides, "--dry-run"])


def test_dry_run_passes_a_good_recipe_and_writes_nothing(tmp_path, model_config_dir, capsys):
    data = _prompts(tmp_path / "data", bad=set())
    out = tmp_path / "run"
    assert _dry_run("train", GRPO, data, model_config_dir, out) == 0
    assert "ready to train" in capsys.readouterr().out
    assert not out.exists()


def test_dry_run_reports_every_bad_row_with_its_id(tmp_path, model_config_dir, capsys):
    data = _prompts(tmp_path / "data", bad={1, 4})
    assert _dry_run("train", GRPO, data, model_config_dir, tmp_path / "run") == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]  # after datasets' progress bars
    assert line.startswith("rlhf train: error: ") and "2 of 6 rows are unusable" in line
    assert "row 1 (id clip1)" in line and "row 4 (id clip4)" in line


def test_sft_dry_run_checks_the_rows_too(tmp_path, model_config_dir, capsys):
    data = _prompts(tmp_path / "data", bad={0})
    assert _dry_run("sft", SFT, data, model_config_dir, tmp_path / "run") == 2
    assert "1 of 6 rows are unusable" in capsys.readouterr().err


def test_dry_run_refuses_a_model_folder_without_a_loadable_config(tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "no_such_architecture"}')
    data = _prompts(tmp_path / "data", bad=set())
    assert _dry_run("train", GRPO, data, model, tmp_path / "run") == 2
    assert "model.path: " in capsys.readouterr().err


def test_validate_auto_scans_small_splits_and_never_skips(tmp_path, monkeypatch):
    scanned = []
    monkeypatch.setattr(preflight, "scan_rows", lambda dataset, data: scanned.append(len(dataset)))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    data = _prompts(tmp_path / "data", bad=set())
    base = [f"model.path={model}", f"data.path={data}", f"run.output_dir={tmp_path / 'run'}"]
    preflight.check(load_config(RLConfig, GRPO, base))
    preflight.check(load_config(RLConfig, GRPO, [*base, "data.validate=never"]))
    monkeypatch.setattr(preflight, "SCAN_AUTO_MAX_ROWS", 5)
    preflight.check(load_config(RLConfig, GRPO, base))
    preflight.check(load_config(RLConfig, GRPO, [*base, "data.validate=always"]))
    assert scanned == [6, 6]


# ------------------------------------------------------------------ one load_split
def _data(path, **extra):
    fields = {
        "path": str(path),
        "split": "train",
        "tasks": None,
        "where": None,
        "max_samples": None,
        "task_repeats": None,
    }
    return type("Data", (), {**fields, **extra})()


def test_load_split_filters_tasks_then_takes_max_samples(tmp_path):
    rows = [
        {"id": i, "task": "pitch" if i % 2 else "gender", "prompt": "q", "audio": "a.wav"}
        for i in range(10)
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dataset = load_split(_data(path, tasks=["pitch"], max_samples=3))
    assert dataset["id"] == [1, 3, 5]
    with pytest.raises(DatasetError, match=r"no rows \(data.tasks=\['speed'\], data.where=None\)"):
        load_split(_data(path, tasks=["speed"]))


def test_where_keeps_the_rows_of_the_listed_speakers_and_names_a_missing_column(tmp_path):
    speakers = ("f1", "m2", "f3")
    rows = [{"id": i, "task": "gender", "speaker": speakers[i % 3]} for i in range(9)]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dataset = load_split(_data(path, where={"speaker": ["f1", "f3"]}, max_samples=4))
    assert dataset["id"] == [0, 2, 3, 5]
    with pytest.raises(DatasetError, match=r"data.where.voice=\['f1'\] needs a 'voice' column"):
        load_split(_data(path, where={"voice": ["f1"]}))


def test_task_repeats_weight_the_mixture_and_name_a_bad_task(tmp_path):
    rows = [{"id": i, "task": ("spoken", "pitch", "gender")[i % 3]} for i in range(6)]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dataset = load_split(_data(path, max_samples=5, task_repeats={"spoken": 3, "pitch": 2}))
    assert dataset["id"] == [0, 0, 0, 1, 1, 2, 3, 3, 3, 4, 4]
    for bad in ({"speed": 2}, {"spoken": 0}):
        with pytest.raises(DatasetError, match=f"data.task_repeats.{next(iter(bad))}="):
            load_split(_data(path, task_repeats=bad))


def test_a_missing_split_is_one_line_and_exit_2(
    tiny_dataset_dir, model_config_dir, tmp_path, capsys
):
    with pytest.raises(MissingSplitError, match="no split 'dev'; splits: "):
        load_split(_data(tiny_dataset_dir, split="dev"))
    overrides = [
        f"data.path={tiny_dataset_dir}",
        "data.split=dev",
        f"model.path={model_config_dir}",
    ]
    assert main(["train", str(GRPO), *overrides, f"run.output_dir={tmp_path / 'r'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlhf train: error: ") and err.count("\n") == 1


def test_a_folder_of_data_files_loads_by_split_name(tmp_path):
    folder = tmp_path / "files"
    folder.mkdir()
    for split, n in (("train", 3), ("test", 2)):
        rows = [{"id": f"{split}{i}", "prompt": "q", "audio": "a.wav"} for i in range(n)]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert load_prompt_dataset(folder, "test")["id"] == ["test0", "test1"]
    assert len(load_prompt_dataset(folder, "train")) == 3
    with pytest.raises(MissingSplitError, match="no split 'dev'"):
        load_prompt_dataset(folder, "dev")


def test_a_hub_id_goes_through_datasets_load_dataset(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, split=None, **kwargs):
        calls.append((path, split))
        return datasets.Dataset.from_list([{"id": "a", "prompt": "q", "audio": "x.wav"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert len(load_prompt_dataset("some-org/speech-prompts", "validation")) == 1
    assert calls == [("some-org/speech-prompts", "validation")]


def test_a_path_that_is_neither_local_nor_a_hub_id_is_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such dataset file or folder"):
        load_prompt_dataset(tmp_path / "a" / "b", "train")


def test_the_trainers_import_without_the_ray_and_trl_extras():
    """`pip install -e .` (no extras) is enough for `rlhf demo`: nothing it imports needs them."""
    code = (
        "import sys\n"
        "sys.modules['ray'] = sys.modules['trl'] = None\n"
        "import rlhf.trainer, rlhf.sft, rlhf.reward_model, rlhf.evaluate, rlhf.demo, rlhf.data.synth"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
