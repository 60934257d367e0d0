"""Every way of putting audio in a dataset row loads correctly or is refused naming the row.

Integer PCM through the real storage paths (save_to_disk, JSON lines, Parquet), rates, the clip /
audio-part match and the duration bounds.
"""

from __future__ import annotations

import io
import json

import datasets
import numpy as np
import pytest
import soundfile as sf

from rlhf.data.loading import load_prompt_dataset, row_to_sample
from rollouts.audio import (
    MAX_CLIP_SECONDS,
    MIN_CLIP_SAMPLES,
    SAMPLE_RATE,
    AudioError,
    log_mel,
    num_audio_tokens,
)

QUESTION = [
    {"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "Who speaks?"}]}
]
TEXT_ONLY = [{"role": "user", "content": [{"type": "text", "text": "Say hello."}]}]


def tone(seconds: float = 0.25, rate: int = SAMPLE_RATE) -> np.ndarray:
    """A 0.5-amplitude 220 Hz tone, float64 in [-1, 1]."""
    return 0.5 * np.sin(2 * np.pi * 220 * np.arange(int(seconds * rate)) / rate)


def pcm16(seconds: float = 0.25) -> np.ndarray:
    return np.round(tone(seconds) * 32767).astype(np.int16)


def flac(seconds: float) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, tone(seconds), SAMPLE_RATE, format="FLAC")
    return buffer.getvalue()


def row(audio, messages=QUESTION, **columns) -> dict:
    return {"id": "r7", "messages": messages, "audio": audio, **columns}


# ---------------------------------------------------------------- integer PCM


def _saved(tmp_path, array) -> dict:
    rows = {"messages": [QUESTION], "audio": [{"array": array, "sampling_rate": SAMPLE_RATE}]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "ds"))
    return load_prompt_dataset(tmp_path / "ds")[0]


def test_int16_pcm_through_save_to_disk_is_scaled_not_silence(tmp_path):
    stored = _saved(tmp_path, pcm16())
    assert isinstance(stored["audio"]["array"][0], int)  # datasets hands back Python ints
    (clip,) = row_to_sample(stored, 0, str(tmp_path / "ds")).audio
    np.testing.assert_allclose(clip, tone(), atol=1 / 32768)


def test_int16_pcm_through_jsonl_and_parquet(tmp_path):
    line = {"messages": QUESTION, "audio": {"array": pcm16().tolist(), "sampling_rate": 16000}}
    (tmp_path / "set.jsonl").write_text(json.dumps(line) + "\n")
    datasets.Dataset.from_list([line]).to_parquet(str(tmp_path / "set.parquet"))
    for name in ("set.jsonl", "set.parquet"):
        source = str(tmp_path / name)
        (clip,) = row_to_sample(load_prompt_dataset(source)[0], 0, source).audio
        np.testing.assert_allclose(clip, tone(), atol=1 / 32768)


def test_float_rows_and_integer_rows_load_alike():
    float_clip = row_to_sample(row({"array": tone(), "sampling_rate": 16000}), 0).audio[0]
    for pcm in (pcm16(), pcm16().astype(np.int32) << 16, pcm16().tolist()):
        clip = row_to_sample(row({"array": pcm, "sampling_rate": 16000}), 0).audio[0]
        np.testing.assert_allclose(clip, float_clip, atol=1 / 32768)
    unsigned = (np.round(tone() * 127) + 128).astype(np.uint8)
    clip = row_to_sample(row({"array": unsigned, "sampling_rate": 16000}), 0).audio[0]
    np.testing.assert_allclose(clip, float_clip, atol=1 / 128)


def test_widened_32_bit_pcm_is_scaled_by_its_width():
    widened = (pcm16().astype(np.int64) << 16).tolist()  # int32 PCM after a trip through JSON
    clip = row_to_sample(row({"array": widened, "sampling_rate": 16000}), 0).audio[0]
    np.testing.assert_allclose(clip, tone(), atol=1 / 32768)


def test_unsigned_8_bit_pcm_widened_to_ints_is_refused(tmp_path):
    unsigned = (np.round(tone() * 127) + 128).astype(np.uint8)
    stored = _saved(tmp_path, unsigned)  # comes back as Python ints: the width is lost
    with pytest.raises(AudioError, match=r"row 3 column 'audio': .*never negative"):
        row_to_sample(stored, 3, str(tmp_path / "ds"))


def test_unscaled_integers_stored_as_floats_are_refused():
    with pytest.raises(AudioError, match=r"in row 2 \(id r7\) column 'audio': .*reach 16384,"):
        row_to_sample(row({"array": pcm16().astype(np.float32), "sampling_rate": 16000}), 2, "in")
    overshoot = np.clip(tone() * 2.4, -1.2, 1.2)  # a little over full scale is still audio
    assert row_to_sample(row({"array": overshoot, "sampling_rate": 16000}), 0).audio


# ---------------------------------------------------------------- sampling rates


@pytest.mark.parametrize(
    ("audio", "problem"),
    [
        ({"array": tone()}, "without a 'sampling_rate'"),
        ({"array": tone(), "sampling_rate": None}, "without a 'sampling_rate'"),
        ({"array": tone(), "sampling_rate": "16k"}, "invalid sampling_rate '16k'"),
        ({"array": tone(), "sampling_rate": 0}, "invalid sampling_rate 0"),
        (tone(), "without a sampling rate"),
        (tone().tolist(), "without a sampling rate"),
    ],
)
def test_arrays_without_a_rate_are_refused_not_read_as_16k(audio, problem):
    with pytest.raises(
        AudioError, match=rf"data.jsonl row 4 \(id r7\) column 'audio': .*{problem}"
    ):
        row_to_sample(row(audio), 4, "data.jsonl")


def test_bare_arrays_in_jsonl_are_refused(tmp_path):
    line = {"prompt": "Who speaks?", "audio": tone().tolist()}
    (tmp_path / "set.jsonl").write_text(json.dumps(line) + "\n")
    source = str(tmp_path / "set.jsonl")
    with pytest.raises(AudioError, match=r"set.jsonl row 0 column 'audio': .*sampling rate"):
        row_to_sample(load_prompt_dataset(source)[0], 0, source)


def test_rate_written_as_a_float_and_decoded_hub_audio_with_a_stale_path():
    audio = {"array": tone(rate=8000), "sampling_rate": 8000.0, "path": "gone/clip.wav"}
    (clip,) = row_to_sample(row(audio), 0).audio
    assert len(clip) == len(tone())


# ---------------------------------------------------------------- clips vs audio parts


@pytest.mark.parametrize(
    ("messages", "clips", "parts"),
    [
        (TEXT_ONLY, 1, 0),
        (QUESTION, 2, 1),
        ([{"role": "user", "content": [{"type": "audio"}, {"type": "audio"}]}], 1, 2),
    ],
)
def test_clips_must_match_audio_parts(messages, clips, parts):
    audio = [flac(0.25)] * clips if clips > 1 else flac(0.25)
    message = rf"set:test row 9 \(id r7\) column 'audio': {parts} audio part\(s\).*{clips} clip"
    with pytest.raises(AudioError, match=message):
        row_to_sample(row(audio, messages), 9, "set:test")


def test_text_only_rows_may_leave_audio_empty():
    for empty in (None, []):
        assert row_to_sample(row(empty, TEXT_ONLY), 0).audio == []


# ---------------------------------------------------------------- duration


def test_min_clip_is_the_shortest_the_encoder_embeds():
    def tokens(samples: int) -> int:
        return num_audio_tokens(log_mel(np.zeros(samples, np.float32)).shape[1])

    assert tokens(MIN_CLIP_SAMPLES) == 1 and tokens(MIN_CLIP_SAMPLES - 1) == 0
    assert row_to_sample(row({"array": tone(), "sampling_rate": 16000}), 0).audio


@pytest.mark.parametrize("samples", [1, MIN_CLIP_SAMPLES - 1])
def test_too_short_clip_is_refused(samples):
    audio = {"array": np.full(samples, 0.1), "sampling_rate": 16000}
    with pytest.raises(AudioError, match=rf"row 1 \(id r7\) column 'audio': .*{MIN_CLIP_SAMPLES}"):
        row_to_sample(row(audio), 1, "set")
    exact = {"array": np.full(MIN_CLIP_SAMPLES, 0.1), "sampling_rate": 16000}
    assert len(row_to_sample(row(exact), 1, "set").audio[0]) == MIN_CLIP_SAMPLES


def test_empty_clip_is_refused():
    with pytest.raises(AudioError, match="no samples"):
        row_to_sample(row({"array": [], "sampling_rate": 16000}), 1, "set")


def test_long_clip_is_refused_naming_its_duration_and_the_maximum():
    long = flac(MAX_CLIP_SECONDS + 1)
    message = r"set row 5 \(id r7\) column 'audio': clip of 31.0 s .* data.max_audio_s=30 s"
    with pytest.raises(AudioError, match=message):
        row_to_sample(row(long), 5, "set")
    assert len(row_to_sample(row(long), 5, "set", max_audio_s=60).audio[0]) == 31 * SAMPLE_RATE
    assert row_to_sample(row(long), 5, "set", max_audio_s=None).audio


def test_second_clip_is_named():
    content = [{"type": "audio"}, {"type": "audio"}]
    messages = [{"role": "user", "content": content}]
    with pytest.raises(AudioError, match=r"row 0 \(id r7\) column 'audio' clip 1: .*shorter"):
        row_to_sample(row([flac(0.25), {"array": [0.1], "sampling_rate": 16000}], messages), 0)


def test_row_structure_errors_are_one_line_user_errors():
    from rewards.errors import UserError

    bad_rows = [
        {"id": "r7", "text": "hi"},  # neither messages nor prompt
        {"id": "r7", "messages": QUESTION},  # an audio part, no audio column
        {"id": "r7", "messages": [{"content": "no role"}], "audio": None},
        {"id": "r7", "messages": [{"role": "user", "content": [{"type": "image"}]}]},
        row({"sampling_rate": 16000}),  # a dict with no samples
        row(3.5),
    ]
    for bad in bad_rows:
        with pytest.raises(UserError) as info:
            row_to_sample(bad, 6, "set.jsonl")
        assert str(info.value).startswith("set.jsonl row 6 (id r7)"), str(info.value)
        assert "\n" not in str(info.value)


def test_recipe_max_audio_s_reaches_the_rows(tmp_path):
    from rlhf.config import DataConfig
    from rlhf.sft import load_examples

    (tmp_path / "long.flac").write_bytes(flac(MAX_CLIP_SECONDS + 1))
    line = {"prompt": "Who speaks?", "audio": "long.flac", "target_answer": "a man"}
    (tmp_path / "set.jsonl").write_text(json.dumps(line) + "\n")
    data = DataConfig(path=str(tmp_path / "set.jsonl"))
    with pytest.raises(AudioError, match=r"set.jsonl:train row 0 column 'audio': clip of 31.0 s"):
        load_examples(data)
    data.max_audio_s = 60.0
    (example,) = load_examples(data)
    assert len(example.sample.audio[0]) == 31 * SAMPLE_RATE
