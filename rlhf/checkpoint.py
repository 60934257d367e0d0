"""Atomic, self-describing, verified checkpoints.

A checkpoint folder ``step-000042`` holds what the trainer writes into it (weights or adapter,
processor, ``trainer_state.pt`` with optimizer, scheduler, data position and step), every
process's RNG states (``rng.pt``) and ``manifest.json``: the run it belongs to (``run_identity``)
and the size of every file in it. The folder is written under a temporary name and renamed, so a
crash leaves either the previous checkpoint or the new one, never half of one; a temporary folder
left by a killed write is removed at the next save or resume.

Resuming verifies before it restores: a folder whose manifest is missing or unreadable, or whose
files are missing or of another size than the manifest says, is not a checkpoint. The newest
intact one is used, with a warning for each newer one skipped; an explicitly given checkpoint
must be intact. Its identity must match the recipe's (``IDENTITY_FIELDS``), else the resume is
refused naming the field. Loading uses ``weights_only=True``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from rlhf.config import ConfigError

logger = logging.getLogger(__name__)

PREFIX = "step-"
MANIFEST = "manifest.json"
RNG_FILE = "rng.pt"
TRAINER_STATE = "trainer_state.pt"
FORMAT = 1

IDENTITY_FIELDS = {
    "model.fingerprint": "the base model's weights and config (model.path)",
    "model.lora": "LoRA or full fine-tuning, and the adapter's shape",
    "model.freeze_audio_encoder": "which parameters the optimizer state belongs to",
    "algorithm.name": "PPO has a critic, GRPO none",
    "algorithm.ppo.critic_path": "where the critic started",
    "data.rows": "the prompts the data position counts (data.path, split, tasks, where, "
    "max_samples)",
    "data.shuffle": "the prompt order",
    "run.seed": "the prompt order",
}
"""What a checkpoint must share with the recipe that resumes it, and why. Everything else may
change on resume: run.steps (to train longer), output and logging options, the optimizer's and the
algorithm's hyper-parameters, sampling, rewards, the compute dtype, and data.path when the new
dataset has as many rows (a moved copy)."""

# Errors a write raises when the disk is full or the folder is not writable: the OS's, torch's
# zip writer's ("unexpected pos", "file write failed") and safetensors'.
try:
    from safetensors import SafetensorError
except ImportError:  # older safetensors
    from safetensors.safetensors_rust import SafetensorError

WRITE_ERRORS = (OSError, RuntimeError, SafetensorError)


class CheckpointError(ConfigError):
    """A checkpoint that cannot be written, read or resumed from; one line for the user."""


# ------------------------------------------------------------------ identity
def model_fingerprint(path: str | Path, samples: int = 16, sample_bytes: int = 4096) -> str:
    """A cheap digest of a ``from_pretrained`` folder: ``config.json``, and of each safetensors
    file its size, header (tensor names, shapes, dtypes) and ``samples`` slices of its data spread
    over the file (a few MiB read for a multi-GB model). Two fine-tunes of one architecture differ
    in their data slices. A hub id that is not a local folder is fingerprinted by its name."""
    folder = Path(path)
    if not folder.is_dir():
        return f"name:{path}"
    digest = hashlib.sha256()
    config = folder / "config.json"
    if config.exists():
        digest.update(config.read_bytes())
    for shard in sorted(folder.glob("*.safetensors")):
        size = shard.stat().st_size
        digest.update(f"{shard.name}:{size}".encode())
        with shard.open("rb") as f:
            header = int.from_bytes(f.read(8), "little")
            digest.update(f.read(min(header, size)))
            start = 8 + header
            step = max((size - start) // samples, 1)
            for offset in range(start, size, step):
                f.seek(offset)
                digest.update(f.read(sample_bytes))
    return digest.hexdigest()[:16]


def run_identity(config: Any, data_rows: int) -> dict[str, Any]:
    """The ``IDENTITY_FIELDS`` of a recipe whose prompt dataset has ``data_rows`` rows."""
    model, algorithm = config.model, getattr(config, "algorithm", None)
    lora = model.lora
    return {
        "model.path": str(model.path),  # for messages; the fingerprint is what must match
        "model.fingerprint": model_fingerprint(model.path),
        "model.lora": (
            {"r": lora.r, "alpha": lora.alpha, "target_modules": sorted(lora.target_modules)}
            if lora.enabled
            else None
        ),
        "model.freeze_audio_encoder": model.freeze_audio_encoder,
        "algorithm.name": algorithm.name if algorithm else None,
        "algorithm.ppo.critic_path": (
            algorithm.ppo.critic_path if algorithm and algorithm.name == "ppo" else None
        ),
        "data.rows": data_rows,
        "data.shuffle": config.data.shuffle,
        "run.seed": config.run.seed,
    }


def identity_mismatch(saved: dict[str, Any], wanted: dict[str, Any]) -> str | None:
    """The first identity field on which a checkpoint and a recipe differ, described."""
    for key, why in IDENTITY_FIELDS.items():
        if saved.get(key) != wanted.get(key):
            if key == "model.fingerprint":
                return (
                    f"it was trained from model {saved.get('model.path')!r}, this recipe's "
                    f"model.path {wanted.get('model.path')!r} holds other weights"
                )
            shown = "model.lora (None: full fine-tuning)" if key == "model.lora" else key
            return f"{shown} is {saved.get(key)!r} there, {wanted.get(key)!r} here ({why})"
    return None


# ------------------------------------------------------------------ writing
def remove_partial_writes(folder: Path, name: str = PREFIX) -> None:
    """Delete temporary folders (``.NAME*``) that a killed write left in ``folder``."""
    folder = Path(folder)
    if folder.is_dir():
        for leftover in folder.glob(f".{name}*"):
            if leftover.is_dir():
                logger.warning("removing %s, left by an interrupted checkpoint write", leftover)
                shutil.rmtree(leftover, ignore_errors=True)


def write_atomic(target: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_dir)`` then rename ``tmp_dir`` to ``target`` (replacing it). A disk
    that is full or not writable is a ``CheckpointError`` naming ``target``; whatever was at
    ``target`` before is then left as it was."""
    target = Path(target)
    tmp = _temporary_folder(target)
    try:
        write(tmp)
        _replace(tmp, target)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, WRITE_ERRORS):
            raise CheckpointError(_write_failure(target, err)) from err
        raise
    return target


def _temporary_folder(target: Path) -> Path:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_partial_writes(target.parent, f"{target.name}.")
        return Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    except OSError as err:
        raise CheckpointError(_write_failure(target, err)) from err


def _replace(tmp: Path, target: Path) -> None:
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)


def _write_failure(target: Path, err: BaseException) -> str:
    reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err).strip()
    reason = reason.splitlines()[0] if reason else type(err).__name__
    if isinstance(err, OSError):
        if err.errno == errno.ENOSPC:
            reason = "no space left on device"
    elif _disk_full(target):  # torch's and safetensors' writers say it in their own words
        reason = f"no space left on device ({reason})"
    return f"cannot write {target}: {reason}"


def _disk_full(target: Path, below: int = 1 << 20) -> bool:
    folder = next((p for p in (target, *target.parents) if p.is_dir()), None)
    try:
        return folder is not None and shutil.disk_usage(folder).free < below
    except OSError:
        return False


def save_checkpoint(
    run_dir: Path,
    step: int,
    write: Callable[[Path], None],
    *,
    identity: dict[str, Any],
    keep_last: int,
    accelerator: Any,
) -> Path:
    """Write ``run_dir/step-NNNNNN`` atomically; keep the newest ``keep_last`` checkpoints.

    Every process calls this: each runs ``write(folder)`` into the same temporary folder (the
    trainer decides which process writes what), and every process's RNG states are saved. The
    main process then adds the manifest and renames. A write that fails on any process (full
    disk, read-only folder) raises ``CheckpointError`` on all of them, the previous checkpoints
    untouched.
    """
    run_dir = Path(run_dir)
    target = run_dir / f"{PREFIX}{step:06d}"
    rng_states = _on_all_ranks(_rng_state(), accelerator)
    tmp, error = None, None
    if accelerator.is_main_process:
        try:
            remove_partial_writes(run_dir)
            tmp = _temporary_folder(target)
        except CheckpointError as err:
            error = str(err)
    tmp, error = _from_main((tmp, error), accelerator)
    if error is None:
        try:
            write(tmp)
        except WRITE_ERRORS as err:
            error = _write_failure(target, err)
    errors = [e for e in _on_all_ranks(error, accelerator) if e]
    if accelerator.is_main_process:
        try:
            if not errors:
                torch.save(rng_states, tmp / RNG_FILE)
                _write_manifest(tmp, step, identity)
                _replace(tmp, target)
        except WRITE_ERRORS as err:
            errors.append(_write_failure(target, err))
        if errors and tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    errors = _from_main(errors, accelerator)
    if errors:
        previous = latest_checkpoint(run_dir)
        kept = f"; {previous.name} is intact" if previous else ""
        raise CheckpointError(errors[0] + kept)
    if accelerator.is_main_process:
        for old in list_checkpoints(run_dir)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return target


def _write_manifest(folder: Path, step: int, identity: dict[str, Any]) -> None:
    files = {
        str(p.relative_to(folder)): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
    manifest = {"format": FORMAT, "step": step, "identity": identity, "files": files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")


def _on_all_ranks(value: Any, accelerator: Any) -> list[Any]:
    """``value`` of every process, in rank order."""
    if accelerator.num_processes == 1:
        return [value]
    from accelerate.utils import gather_object

    return gather_object([value])


def _from_main(value: Any, accelerator: Any) -> Any:
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    payload = [value]
    broadcast_object_list(payload)
    return payload[0]


def _rng_state() -> dict[str, Any]:
    # Sampling and data order use their own seeded generators; the global torch RNGs cover
    # dropout and anything a user's code draws.
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()  # this process's device
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ------------------------------------------------------------------ reading
def list_checkpoints(run_dir: Path) -> list[Path]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    return sorted(p for p in run_dir.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def read_manifest(checkpoint: Path) -> dict[str, Any]:
    """The manifest of an intact checkpoint; ``CheckpointError`` saying what is wrong otherwise."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        raise CheckpointError(f"{checkpoint} is not a checkpoint folder")
    try:
        manifest = json.loads((checkpoint / MANIFEST).read_text())
        files, identity = manifest["files"], manifest["identity"]
    except FileNotFoundError as err:
        raise CheckpointError(f"{checkpoint} has no {MANIFEST}: not a complete checkpoint") from err
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{checkpoint}/{MANIFEST} is unreadable ({err})") from err
    if not isinstance(files, dict) or not isinstance(identity, dict):
        raise CheckpointError(f"{checkpoint}/{MANIFEST} is unreadable (bad fields)")
    for name, size in files.items():
        path = checkpoint / name
        if not path.is_file():
            raise CheckpointError(f"{checkpoint} is incomplete: {name} is missing")
        if path.stat().st_size != size:
            raise CheckpointError(
                f"{checkpoint} is damaged: {name} has {path.stat().st_size} bytes, not {size}"
            )
    for name in (TRAINER_STATE, RNG_FILE):
        if name not in files or not zipfile.is_zipfile(checkpoint / name):
            raise CheckpointError(f"{checkpoint} is damaged: {name} is missing or unreadable")
    return manifest


def find_checkpoint(
    run_dir: Path, identity: dict[str, Any], checkpoint: Path | None = None
) -> Path:
    """The checkpoint to resume from: ``checkpoint`` if given (it must be intact), else the newest
    intact one in ``run_dir``, warning about each newer one that is not. Its identity must match
    ``identity``. Temporary folders of interrupted writes are removed first."""
    run_dir = Path(run_dir)
    remove_partial_writes(run_dir)
    if checkpoint is not None:
        try:
            chosen, manifest = Path(checkpoint), read_manifest(checkpoint)
        except CheckpointError as err:
            raise CheckpointError(f"--resume: {err}") from err
    else:
        candidates = list_checkpoints(run_dir)[::-1]
        if not candidates:
            raise CheckpointError(f"--resume: no checkpoint in {run_dir}")
        chosen = manifest = None
        skipped: list[str] = []  # why each newer checkpoint cannot be used
        for candidate in candidates:
            try:
                chosen, manifest = candidate, read_manifest(candidate)
                break
            except CheckpointError as err:
                skipped.append(str(err))
        if manifest is None:
            raise CheckpointError(f"--resume: no intact checkpoint in {run_dir}: {skipped[0]}")
        for reason in skipped:
            logger.warning("%s; resuming from %s instead", reason, chosen)
    mismatch = identity_mismatch(manifest["identity"], identity)
    if mismatch:
        raise CheckpointError(f"--resume: {chosen} belongs to another run: {mismatch}")
    return chosen


def load_trainer_state(checkpoint: Path, rank: int = 0) -> dict[str, Any]:
    """Read ``trainer_state.pt`` (tensors and plain data only) and restore process ``rank``'s RNG
    states (with another number of processes than saved, ranks beyond it keep their own)."""
    checkpoint = Path(checkpoint)
    try:
        state = torch.load(checkpoint / TRAINER_STATE, weights_only=True)
        rng_states = torch.load(checkpoint / RNG_FILE, weights_only=True)
    except (OSError, RuntimeError) as err:
        raise CheckpointError(f"{checkpoint}: cannot read the trainer state ({err})") from err
    if rank < len(rng_states):
        _set_rng_state(rng_states[rank])
    return state
