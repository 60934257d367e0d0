"""Prompt datasets in, ``PromptSample``s out: the one door every dataset row comes through.

Datasets are whatever ``datasets`` reads: a ``save_to_disk`` folder (``DatasetDict`` or a
single ``Dataset``; ``rlhf make-data``'s output folder too), a ``.jsonl`` / ``.json`` /
``.parquet`` / ``.csv`` file, a folder of such files, or a hub id (``org/name``). Audio stays undecoded in the table (bytes, a path, or a
``{"bytes", "path"}`` / ``{"array", "sampling_rate"}`` dict) and is decoded here, row by row, with
``rollouts.audio.load_audio`` — never by ``datasets``' ``Audio`` feature, whose torchcodec backend
does not load in every environment — so a bad clip fails with the dataset and row in the message.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from rewards.errors import UserError
from rollouts.audio import MAX_CLIP_SECONDS, MIN_CLIP_SAMPLES, SAMPLE_RATE, AudioError, load_audio
from rollouts.types import PromptSample

FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
# Columns that build the prompt itself; every other column travels in PromptSample.columns.
PROMPT_COLUMNS = ("messages", "prompt", "audio")


class DatasetError(UserError):
    """A dataset that cannot be read as asked: no such file, folder, hub id or rows."""


class MissingSplitError(DatasetError, KeyError):
    """The dataset has no split of that name (a ``KeyError`` too, as a mapping lookup is)."""

    __str__ = Exception.__str__  # KeyError's would quote the message


class MissingColumnError(DatasetError, KeyError):
    """A row lacks a column it needs (a ``KeyError`` too, as a mapping lookup is)."""

    __str__ = Exception.__str__


# owner/name as the Hugging Face hub spells a repository id
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def load_prompt_dataset(path: str | os.PathLike, split: str = "train") -> datasets.Dataset:
    """The ``split`` of the dataset at ``path``, its audio columns left undecoded.

    ``path`` is a file (``.jsonl`` / ``.json`` / ``.parquet`` / ``.csv``: one split, returned
    whole), a ``save_to_disk`` folder (or one holding ``data/`` from ``rlhf make-data``), a
    folder of data files, or a hub id ``org/name`` that is no local path; the last two are read
    by ``datasets.load_dataset(path, split=split)``, which infers splits from file names
    (``train.jsonl``, ``test-00000-of-00001.parquet``) and uses the hub cache when offline.
    """
    where = str(path)
    path = Path(path)
    if path.is_file():
        builder = FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise DatasetError(
                f"{path}: unsupported dataset file type {path.suffix!r}; "
                f"use one of {sorted(FILE_BUILDERS)} or a save_to_disk folder"
            )
        dataset = datasets.load_dataset(builder, data_files=str(path), split="train")
    elif path.is_dir():
        root = path / "data" if (path / "data" / "dataset_dict.json").is_file() else path
        if (root / "dataset_dict.json").is_file():
            splits = datasets.load_from_disk(str(root))
            if split not in splits:
                raise MissingSplitError(f"{root}: no split {split!r}; splits: {sorted(splits)}")
            dataset = splits[split]
        elif (root / "state.json").is_file():
            dataset = datasets.load_from_disk(str(root))
        else:
            dataset = _load_dataset(where, split)
    elif HUB_ID.match(where):
        dataset = _load_dataset(where, split)
    else:
        raise FileNotFoundError(f"{path}: no such dataset file or folder")
    for name, feature in dataset.features.items():
        if isinstance(feature, datasets.Audio) and feature.decode:
            dataset = dataset.cast_column(name, datasets.Audio(decode=False))
    return dataset


def _load_dataset(where: str, split: str) -> datasets.Dataset:
    """A folder of data files or a hub id, through ``datasets.load_dataset``; its errors named."""
    local = Path(where).is_dir()
    try:
        return datasets.load_dataset(where, split=split)
    except ValueError as err:
        if "split" in str(err).lower():  # datasets: 'Unknown split "x". Should be one of [...]'
            raise MissingSplitError(f"{where}: no split {split!r} ({err})") from err
        raise DatasetError(f"{where}: {err}") from err
    except (FileNotFoundError, OSError, ConnectionError) as err:
        what = (
            "a folder without dataset files (nor save_to_disk's dataset_dict.json / state.json)"
            if local
            else "no such local file or folder, and not found as a Hugging Face hub dataset"
        )
        raise DatasetError(f"{where}: {what} ({str(err).splitlines()[0]})") from err


def load_split(data: Any, split: str | None = None) -> datasets.Dataset:
    """The rows a recipe's ``data`` section selects: ``split`` (default ``data.split``) of
    ``data.path``, only rows whose ``task`` is in ``data.tasks`` and whose columns hold the values
    ``data.where`` lists, then the first ``data.max_samples``, each row repeated as
    ``data.task_repeats`` says for its task. Raises ``DatasetError`` when no row is left, for a
    filter on a column the split lacks, or for a repeat that names no task of the split."""
    split = split or data.split
    dataset = load_prompt_dataset(data.path, split)
    filters = {"tasks": ("task", data.tasks)}
    filters |= {
        f"where.{column}": (column, values) for column, values in (data.where or {}).items()
    }
    for key, (column, values) in filters.items():
        if not values:
            continue
        if column not in dataset.column_names:
            raise DatasetError(
                f"{data.path}:{split}: data.{key}={list(values)} needs a {column!r} column; "
                f"columns: {dataset.column_names}"
            )
        keep = {str(value) for value in values}
        dataset = dataset.filter(lambda value, keep=keep: str(value) in keep, input_columns=column)
    if data.max_samples:
        dataset = dataset.select(range(min(data.max_samples, len(dataset))))
    if len(dataset) == 0:
        raise DatasetError(
            f"{data.path}:{split}: no rows (data.tasks={data.tasks}, data.where={data.where})"
        )
    if data.task_repeats:
        tasks = dataset["task"] if "task" in dataset.column_names else []
        present = set(tasks)
        for task, times in data.task_repeats.items():
            if task not in present or not isinstance(times, int) or times < 1:
                raise DatasetError(
                    f"{data.path}:{split}: data.task_repeats.{task}={times!r}: needs a whole "
                    f"number >= 1 and a task of the rows; tasks: {sorted(present)}"
                )
        repeats = [data.task_repeats.get(task, 1) for task in tasks]
        dataset = dataset.select([i for i, times in enumerate(repeats) for _ in range(times)])
    return dataset


def row_to_sample(
    row: dict[str, Any],
    index: int,
    source: str = "dataset",
    *,
    think: bool = True,
    max_audio_s: float | None = MAX_CLIP_SECONDS,
) -> PromptSample:
    """One dataset row as a ``PromptSample``.

    ``source`` names the dataset in errors (``"path"`` or ``"path:split"``); relative audio paths
    are resolved against that path's folder. A row has ``messages`` (audio parts take the row's
    ``audio``: one clip, or a list with one clip per part), or else a ``prompt`` and an ``audio``
    column, which become one user turn ``[audio, prompt]``. ``think`` comes from the recipe;
    ``spoken`` from the row's ``spoken`` column when it has one.

    Every clip must match an audio part and last from ``MIN_CLIP_SAMPLES`` to ``max_audio_s``
    seconds (None: no maximum); anything else raises ``AudioError`` naming the row.
    """
    where = f"{source} row {index}"
    if row.get("id") is not None:
        where += f" (id {row['id']})"
    if row.get("messages") is not None:
        messages = [_message(message, where) for message in row["messages"]]
    elif "prompt" in row:
        _require(row, "audio", where)
        content = [{"type": "audio"}, {"type": "text", "text": str(row["prompt"])}]
        messages = [{"role": "user", "content": content}]
    else:
        raise MissingColumnError(
            f"{where}: no 'messages' column (nor 'prompt' + 'audio'); "
            f"available columns: {sorted(row)}"
        )

    wanted = sum(
        part["type"] == "audio"
        for message in messages
        if isinstance(message["content"], list)
        for part in message["content"]
    )
    if wanted:
        _require(row, "audio", where)
    clips = _clips(row.get("audio"))
    if len(clips) != wanted:
        raise AudioError(
            f"{where} column 'audio': {wanted} audio part(s) in the messages but "
            f"{len(clips)} clip(s); each {{'type': 'audio'}} part takes one clip, in order"
        )
    root = _audio_root(source)
    audio = []
    for k, clip in enumerate(clips):
        label = f"{where} column 'audio'" + (f" clip {k}" if wanted > 1 else "")
        audio.append(_check_duration(_load_clip(clip, root, label), label, max_audio_s))

    return PromptSample(
        id=str(row["id"]) if row.get("id") is not None else f"{source}:{index}",
        messages=messages,
        audio=audio,
        columns={key: value for key, value in row.items() if key not in PROMPT_COLUMNS},
        think=think,
        spoken=bool(row.get("spoken") or False),
    )


def _require(row: dict[str, Any], column: str, where: str) -> None:
    if column not in row:
        raise MissingColumnError(
            f"{where}: missing column {column!r}; available columns: {sorted(row)}"
        )


def _message(message: dict[str, Any], where: str) -> dict[str, Any]:
    """A message with Arrow's null fields dropped and its parts in our form."""
    if not isinstance(message, dict) or not message.get("role"):
        raise DatasetError(
            f"{where} column 'messages': every message needs a 'role', got {message!r}"
        )
    out = {key: value for key, value in message.items() if value is not None}
    content = message.get("content")
    if content is None:
        out["content"] = ""
    elif not isinstance(content, str):
        out["content"] = [_part(part, where) for part in content]
    return out


def _part(part: dict[str, Any], where: str) -> dict[str, Any]:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "audio":
        return {"type": "audio"}
    if kind == "text":
        return {"type": "text", "text": part.get("text") or ""}
    raise DatasetError(
        f"{where} column 'messages': a part must be of type 'text' or 'audio', got {part!r}"
    )


def _clips(value: Any) -> list[Any]:
    """The clips of a row's ``audio`` value: none (null or an empty list), one, or a list."""
    if value is None:
        return []
    if _is_clip_list(value):
        return list(value)
    if isinstance(value, (list, tuple)) and not value:
        return []
    return [value]


def _is_clip_list(value: Any) -> bool:
    """A list of clips (one per audio part), as opposed to one clip's samples."""
    clip_types = (bytes, bytearray, str, os.PathLike, dict, list, np.ndarray, type(None))
    return isinstance(value, (list, tuple)) and bool(value) and isinstance(value[0], clip_types)


@functools.lru_cache(maxsize=64)
def _audio_root(source: str) -> Path:
    """The folder relative audio paths hang from: the dataset file's folder, or its directory."""
    for candidate in (source, source.rpartition(":")[0]):
        path = Path(candidate) if candidate else None
        if path is not None and path.is_file():
            return path.parent
        if path is not None and path.is_dir():
            return path
    return Path.cwd()


def _load_clip(clip: Any, root: Path, where: str) -> np.ndarray:
    """Decode one clip in any of the forms a dataset stores audio in.

    Samples need their rate: a ``{"array", "sampling_rate"}`` dict. A bare array (or list) of
    samples is refused, as is a dict without a rate, rather than assumed to be 16 kHz.
    """
    if isinstance(clip, dict):
        if clip.get("bytes"):
            return load_audio(clip["bytes"], name=where)
        if clip.get("array") is not None:  # before 'path': decoded Hub audio keeps a stale path
            rate = _sampling_rate(clip.get("sampling_rate"), where)
            return load_audio(np.asarray(clip["array"]), rate, name=where)
        if clip.get("path"):
            return load_audio(root / clip["path"], name=where)
        raise AudioError(f"{where}: audio dict has no 'bytes', 'path' or 'array': {sorted(clip)}")
    if isinstance(clip, (bytes, bytearray)):
        return load_audio(bytes(clip), name=where)
    if isinstance(clip, (str, os.PathLike)):
        return load_audio(root / clip, name=where)
    if isinstance(clip, (np.ndarray, list, tuple)):
        raise AudioError(
            f"{where}: an array of samples without a sampling rate; store it as "
            "{'array': samples, 'sampling_rate': rate}"
        )
    if clip is None:
        raise AudioError(f"{where}: the audio is missing (null)")
    raise AudioError(f"{where}: cannot read audio from {type(clip).__name__}")


def _sampling_rate(rate: Any, where: str) -> int:
    """The rate of an array clip: a positive whole number of Hz (JSON may give 16000.0)."""
    if rate is None:
        raise AudioError(
            f"{where}: audio array without a 'sampling_rate'; give the rate it was recorded at"
        )
    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.number)):
        raise AudioError(f"{where}: invalid sampling_rate {rate!r}")
    if not float(rate).is_integer() or rate <= 0:
        raise AudioError(f"{where}: invalid sampling_rate {rate!r}")
    return int(rate)


def _check_duration(wav: np.ndarray, where: str, max_seconds: float | None) -> np.ndarray:
    """``wav`` (16 kHz) if its length is one the model can take and the recipe allows."""
    if len(wav) < MIN_CLIP_SAMPLES:
        raise AudioError(
            f"{where}: clip of {len(wav)} sample(s) at 16 kHz is shorter than "
            f"{MIN_CLIP_SAMPLES} samples ({1000 * MIN_CLIP_SAMPLES / SAMPLE_RATE:.0f} ms), the "
            "shortest the audio encoder turns into a token"
        )
    seconds = len(wav) / SAMPLE_RATE
    if max_seconds is not None and seconds > max_seconds:
        raise AudioError(
            f"{where}: clip of {seconds:.1f} s is longer than data.max_audio_s={max_seconds:g} s; "
            "raise it for long-form audio (each 25 s adds 313 prompt tokens) or cut the clip"
        )
    return wav
