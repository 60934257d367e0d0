"""Loading prompt datasets: every audio form, clear errors for bad clips and missing columns."""

from __future__ import annotations

import io
import json

import datasets
import numpy as np
import pytest
import soundfile as sf

from rlhf.data.loading import load_prompt_dataset, row_to_sample
from rollouts.audio import AudioError


def _flac(seconds: float = 0.5, rate: int = 16_000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buffer = io.BytesIO()
    sf.write(buffer, 0.3 * np.sin(2 * np.pi * 220 * t), rate, format="FLAC")
    return buffer.getvalue()


def _messages(question: str) -> list[dict]:
    return [
        {
            "role": "user",
            "content": [{"type": "audio", "text": None}, {"type": "text", "text": question}],
        }
    ]


def test_synthetic_dataset_rows_become_prompt_samples(tiny_dataset_dir):
    metadata = json.loads((tiny_dataset_dir.parent / "metadata.json").read_text())
    for path in (tiny_dataset_dir, tiny_dataset_dir.parent):  # data/ or make-data's folder
        test = load_prompt_dataset(path, "test")
        assert len(test) == metadata["splits"]["test"]["rows"]
    row = test[0]
    sample = row_to_sample(row, 0, f"{tiny_dataset_dir}:test", think=False)
    assert sample.id == row["id"] and sample.think is False
    assert sample.spoken == row["spoken"]
    (clip,) = sample.audio
    assert clip.dtype == np.float32 and clip.ndim == 1 and len(clip) > 8000
    assert sample.messages == [
        {
            "role": "user",
            "content": [
                {"type": "audio"},
                {"type": "text", "text": row["messages"][0]["content"][1]["text"]},
            ],
        }
    ]
    assert {"task", "label", "transcript", "target_answer"} <= set(sample.columns)
    assert "audio" not in sample.columns and "messages" not in sample.columns
    with pytest.raises(KeyError, match="no split 'validation'; splits: \\['test', 'train'\\]"):
        load_prompt_dataset(tiny_dataset_dir, "validation")


def test_corrupt_clip_names_the_dataset_and_row(tmp_path):
    rows = {
        "id": ["good", "bad"],
        "audio": [_flac(), b"this is not audio"],
        "messages": [_messages("Transcribe the audio.")] * 2,
    }
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "ds"))
    dataset = load_prompt_dataset(tmp_path / "ds")
    source = f"{tmp_path / 'ds'}:train"
    assert len(row_to_sample(dataset[0], 0, source).audio[0]) == 8000
    with pytest.raises(AudioError, match=r"ds:train row 1 \(id bad\)"):
        row_to_sample(dataset[1], 1, source)


def test_missing_columns_are_named_with_the_available_ones():
    with pytest.raises(KeyError, match=r"no 'messages' column.*\['id', 'text'\]"):
        row_to_sample({"id": "x", "text": "hello"}, 3, "my.jsonl")
    with pytest.raises(KeyError, match=r"row 4.*missing column 'audio'.*\['messages'\]"):
        row_to_sample({"messages": _messages("Hi?")}, 4, "my.jsonl")
    with pytest.raises(ValueError, match=r"1 audio part.*2 clip"):
        row_to_sample({"messages": _messages("Hi?"), "audio": [_flac(), _flac()]}, 5, "my.jsonl")


def test_jsonl_with_prompt_and_relative_audio_path(tmp_path):
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "a.flac").write_bytes(_flac(0.25, rate=22_050))
    line = {"prompt": "Is the speaker male or female?", "audio": "clips/a.flac", "label": "male"}
    (tmp_path / "set.jsonl").write_text(json.dumps(line) + "\n")
    dataset = load_prompt_dataset(tmp_path / "set.jsonl")
    sample = row_to_sample(dataset[0], 0, f"{tmp_path / 'set.jsonl'}:train")
    assert sample.messages == [
        {
            "role": "user",
            "content": [{"type": "audio"}, {"type": "text", "text": line["prompt"]}],
        }
    ]
    assert len(sample.audio[0]) == 4000  # resampled to 16 kHz
    assert sample.columns == {"label": "male"}


def test_audio_feature_is_not_decoded_by_datasets(tmp_path):
    # A dataset whose audio column is datasets' Audio feature (as pushed to the Hub): built with a
    # cast, because encoding through the feature itself needs torchcodec.
    rows = {"audio": [{"bytes": _flac(), "path": None}], "prompt": ["Transcribe the audio."]}
    dataset = datasets.Dataset.from_dict(rows).cast_column("audio", datasets.Audio())
    dataset.save_to_disk(str(tmp_path / "ds"))
    dataset = load_prompt_dataset(tmp_path / "ds")
    assert dataset.features["audio"].decode is False
    assert len(row_to_sample(dataset[0], 0, str(tmp_path / "ds")).audio[0]) == 8000


def test_array_clips_and_several_audio_parts():
    content = [{"type": "audio"}, {"type": "text", "text": "Same speaker?"}, {"type": "audio"}]
    row = {
        "messages": [{"role": "user", "content": content}],
        "audio": [
            {"array": np.zeros(8000, np.float32) + 0.1, "sampling_rate": 8000},
            {"bytes": _flac(), "path": None},
        ],
    }
    sample = row_to_sample(row, 0, "inline")
    assert [len(a) for a in sample.audio] == [16000, 8000]
