"""Checkpoints say what run they belong to, and resuming restores only an intact one of this run."""

from __future__ import annotations

import errno
import json
import logging
import shutil
from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from test_trainer import tiny_rl_config

from rlhf.checkpoint import (
    CheckpointError,
    find_checkpoint,
    list_checkpoints,
    load_trainer_state,
    model_fingerprint,
    save_checkpoint,
    write_atomic,
)
from rlhf.trainer import RLTrainer

IDENTITY = {"model.path": "m", "model.fingerprint": "abc", "model.lora": None, "run.seed": 0}


@pytest.fixture(scope="module")
def accelerator():
    return Accelerator(cpu=True)


def write_parts(folder):
    (folder / "model.safetensors").write_bytes(b"weights" * 100)
    torch.save({"optimizer": {}, "step": 0}, folder / "trainer_state.pt")


def save(run_dir, step, accelerator, write=write_parts, identity=IDENTITY, keep_last=3):
    return save_checkpoint(
        run_dir, step, write, identity=identity, keep_last=keep_last, accelerator=accelerator
    )


def test_manifest_lists_every_file_and_the_run(tmp_path, accelerator):
    path = save(tmp_path, 2, accelerator)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["identity"] == IDENTITY and manifest["step"] == 2
    assert set(manifest["files"]) == {"model.safetensors", "trainer_state.pt", "rng.pt"}
    assert find_checkpoint(tmp_path, IDENTITY) == path


@pytest.mark.parametrize(
    "damage",
    ["delete weights", "truncate weights", "garbage trainer state", "bad manifest", "no manifest"],
)
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous(
    tmp_path, accelerator, caplog, damage
):
    older, newest = save(tmp_path, 2, accelerator), save(tmp_path, 4, accelerator)
    if damage == "delete weights":
        (newest / "model.safetensors").unlink()
    elif damage == "truncate weights":
        (newest / "model.safetensors").write_bytes(b"weights")
    elif damage == "garbage trainer state":
        size = (newest / "trainer_state.pt").stat().st_size
        (newest / "trainer_state.pt").write_bytes(b"\0" * size)
    elif damage == "bad manifest":
        (newest / "manifest.json").write_text("{not json")
    else:
        (newest / "manifest.json").unlink()
    with caplog.at_level(logging.WARNING, logger="rlhf.checkpoint"):
        assert find_checkpoint(tmp_path, IDENTITY) == older
    warning = caplog.records[-1].getMessage()
    assert str(newest) in warning and f"resuming from {older} instead" in warning
    # named explicitly, the damaged one is an error
    with pytest.raises(CheckpointError, match=f"--resume: {newest}"):
        find_checkpoint(tmp_path, IDENTITY, newest)


def test_no_intact_checkpoint_is_an_error(tmp_path, accelerator):
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        find_checkpoint(tmp_path, IDENTITY)
    only = save(tmp_path, 2, accelerator)
    (only / "model.safetensors").unlink()
    with pytest.raises(
        CheckpointError, match=r"no intact checkpoint.*model\.safetensors is missing"
    ):
        find_checkpoint(tmp_path, IDENTITY)


def test_a_checkpoint_of_another_run_is_refused_naming_the_field(tmp_path, accelerator):
    path = save(tmp_path, 2, accelerator)
    lora = {**IDENTITY, "model.lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj"]}}
    with pytest.raises(CheckpointError, match=rf"{path} belongs to another run: model\.lora"):
        find_checkpoint(tmp_path, lora)
    with pytest.raises(CheckpointError, match=r"run\.seed is 0 there, 1 here"):
        find_checkpoint(tmp_path, {**IDENTITY, "run.seed": 1})


def test_leftovers_of_a_killed_write_are_removed(tmp_path, accelerator):
    save(tmp_path, 2, accelerator)
    (tmp_path / ".step-000004.k1ll3d").mkdir()
    find_checkpoint(tmp_path, IDENTITY)
    assert not (tmp_path / ".step-000004.k1ll3d").exists()
    (tmp_path / ".step-000004.k1ll3d").mkdir()
    save(tmp_path, 4, accelerator)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000002", "step-000004"]


@pytest.mark.parametrize(
    "failure",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        PermissionError(errno.EACCES, "Permission denied"),
        # torch.save's zip writer on a full disk
        RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"),
    ],
)
def test_a_failed_write_is_one_line_and_keeps_the_previous_checkpoint(
    tmp_path, accelerator, failure
):
    previous = save(tmp_path, 2, accelerator)

    def write(folder):
        write_parts(folder)
        raise failure

    with pytest.raises(CheckpointError) as caught:
        save(tmp_path, 4, accelerator, write=write)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"cannot write {tmp_path / 'step-000004'}: ")
    assert message.endswith("; step-000002 is intact")
    assert [p.name for p in tmp_path.iterdir()] == ["step-000002"]  # no temporary folder left
    assert find_checkpoint(tmp_path, IDENTITY) == previous


def test_torchs_words_for_a_full_disk_are_explained(tmp_path, accelerator, monkeypatch):
    def write(folder):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(free=0))
    with pytest.raises(CheckpointError, match=r"step-000004: no space left on device \(\[enforce"):
        save(tmp_path, 4, accelerator, write=write)


def test_an_output_path_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "run").write_text("")
    with pytest.raises(CheckpointError, match=f"cannot write {tmp_path / 'run' / 'final'}"):
        write_atomic(tmp_path / "run" / "final", write_parts)


def test_each_process_gets_its_own_rng_state_back(tmp_path, accelerator):
    path = save(tmp_path, 2, accelerator)
    states = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        states.append({"torch": torch.get_rng_state()})
    torch.save(states, path / "rng.pt")  # as two processes would have saved them
    for rank, seed in enumerate((1, 2)):
        load_trainer_state(path, rank=rank)
        drawn = torch.rand(3)
        torch.manual_seed(seed)
        assert torch.equal(drawn, torch.rand(3))


def test_model_fingerprint_tells_fine_tunes_of_one_architecture_apart(tiny_model_dir, tmp_path):
    copy = shutil.copytree(tiny_model_dir, tmp_path / "copy")
    assert model_fingerprint(copy) == model_fingerprint(tiny_model_dir)
    other = perturbed_copy(tiny_model_dir, tmp_path / "other")
    assert model_fingerprint(other) != model_fingerprint(tiny_model_dir)


def perturbed_copy(model_dir, out):
    """The same architecture and files, other weights (as another fine-tune of it would have)."""
    out = shutil.copytree(model_dir, out)
    weights = load_file(out / "model.safetensors")
    weights = {k: v + 0.01 if v.is_floating_point() else v for k, v in weights.items()}
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    return out


# ------------------------------------------------------------------ through the RL trainer
@pytest.fixture(scope="module")
def trained_run(tiny_model_dir, tiny_dataset_dir, tmp_path_factory):
    """A one-step full fine-tuning run with its checkpoint ``step-000001``."""
    run = tmp_path_factory.mktemp("ckpt") / "run"
    config = tiny_rl_config(
        tiny_model_dir, tiny_dataset_dir, run, "run.steps=1", "run.save_every=1"
    )
    RLTrainer(config).train()
    return run


def resume(model_dir, data_dir, run, *extra, checkpoint=None):
    trainer = RLTrainer(tiny_rl_config(model_dir, data_dir, run, "run.steps=2", *extra))
    trainer.resume(checkpoint)
    return trainer


def test_resume_refuses_another_models_checkpoint(
    trained_run, tiny_model_dir, tiny_dataset_dir, tmp_path
):
    other = perturbed_copy(tiny_model_dir, tmp_path / "other_model")
    with pytest.raises(CheckpointError, match=r"trained from model .* holds other weights"):
        resume(other, tiny_dataset_dir, trained_run)


def test_resume_refuses_a_full_checkpoint_into_a_lora_run(
    trained_run, tiny_model_dir, tiny_dataset_dir
):
    with pytest.raises(CheckpointError, match=r"model\.lora .* is None there"):
        resume(tiny_model_dir, tiny_dataset_dir, trained_run, "model.lora.enabled=true")


def test_resume_refuses_a_checkpoint_without_its_weights(
    trained_run, tiny_model_dir, tiny_dataset_dir, tmp_path
):
    run = shutil.copytree(trained_run, tmp_path / "run")
    (run / "step-000001" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model\.safetensors is missing"):
        resume(tiny_model_dir, tiny_dataset_dir, run)
    assert list_checkpoints(run)  # nothing deleted


def test_resume_restores_a_checkpoint_of_this_run(trained_run, tiny_model_dir, tiny_dataset_dir):
    trainer = resume(
        tiny_model_dir,
        tiny_dataset_dir,
        trained_run,
        "optim.lr=1e-4",  # may change on resume
        checkpoint=trained_run / "step-000001",
    )
    assert trainer.global_step == 1


def test_rlhf_train_resume_from_a_checkpoint_without_weights_is_one_line_and_exit_2(
    trained_run, tiny_model_dir, tiny_dataset_dir, tmp_path, capsys
):
    from rlhf.cli import main

    run = shutil.copytree(trained_run, tmp_path / "run")
    (run / "step-000001" / "model.safetensors").unlink()
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("rewards:\n  - {name: trainer_test_think_chars}\n")
    overrides = [
        f"model.path={tiny_model_dir}",
        f"data.path={tiny_dataset_dir}",
        "data.tasks=[gender,pitch,speed]",
        f"run.output_dir={run}",
        "run.steps=2",
        "rollout.prompts_per_step=2",
        "rollout.num_generations=4",
    ]
    code = main(["train", str(recipe), *overrides, "--resume-from", str(run / "step-000001")])
    assert code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == (
        f"rlhf train: error: --resume: {run / 'step-000001'} is incomplete: "
        "model.safetensors is missing"
    )
    assert list_checkpoints(run) == [run / "step-000001"]  # nothing trained
