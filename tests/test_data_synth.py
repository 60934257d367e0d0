"""Synthetic speech data: grammar, acoustic separation of the levels, row schema, determinism."""

from __future__ import annotations

import hashlib
import io
import json

import datasets
import numpy as np
import pytest
import soundfile as sf

from rlhf.cli import main
from rlhf.data import grammar, synth

SENTENCE = "The old farmer painted a red boat near the river."


def _f0(pcm: np.ndarray, rate: int = synth.SAMPLE_RATE) -> float:
    """Median autocorrelation pitch (60–400 Hz) over the loud 40 ms frames."""
    wav = pcm.astype(np.float64) / 32768
    frame = int(0.04 * rate)
    frames = [wav[i : i + frame] for i in range(0, len(wav) - frame, frame // 2)]
    loudness = np.array([np.sqrt((f**2).mean()) for f in frames])
    lags = np.arange(rate // 400, rate // 60)
    pitches = []
    for f in (f for f, rms in zip(frames, loudness, strict=True) if rms > 0.3 * loudness.max()):
        f = f - f.mean()
        corr = np.array([(f[:-lag] * f[lag:]).sum() for lag in lags])
        pitches.append(rate / lags[corr.argmax()])
    return float(np.median(pitches))


def _digest(directory) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def test_sentences_are_short_varied_and_never_name_a_label():
    rng = np.random.default_rng(0)
    sentences = [grammar.sentence(rng) for _ in range(300)]
    lengths = [len(s.split()) for s in sentences]
    assert min(lengths) >= grammar.MIN_WORDS and max(lengths) <= grammar.MAX_WORDS
    assert len(set(sentences)) > 290
    assert all(s[0].isupper() and s.endswith(".") for s in sentences)
    labels = {level for levels in grammar.DIMENSIONS.values() for level in levels}
    assert not labels & set(grammar.vocabulary())
    assert 300 <= len(grammar.vocabulary()) <= 600
    again = np.random.default_rng(0)
    assert [grammar.sentence(again) for _ in range(300)] == sentences
    longer = [grammar.sentence(rng, clauses=2) for _ in range(100)]
    assert all(
        2 * grammar.MIN_WORDS + 1 <= len(s.split()) <= 2 * grammar.MAX_WORDS + 1 for s in longer
    )


def test_think_lengths_vary_and_mention_the_true_level():
    rng = np.random.default_rng(1)
    thoughts = [
        grammar.think(
            "speed", rng, dimension="speed", level="fast", transcript=SENTENCE, seconds=1.5
        )
        for _ in range(300)
    ]
    lengths = [len(t.split()) for t in thoughts]
    assert min(lengths) >= 5 and max(lengths) <= grammar.MAX_THINK_WORDS
    assert np.mean([n <= 12 for n in lengths]) > 0.15 and np.mean([n >= 25 for n in lengths]) > 0.15
    assert all("fast" in t for t in thoughts)
    assert not any("slow" in t for t in thoughts)


def test_corpus_covers_everything_the_dataset_says():
    words = set(grammar.corpus().lower().replace(".", " ").replace("?", " ").split())
    assert set(grammar.vocabulary()) <= words
    assert {"transcribe", "male", "female", "quick", "deep", "normal", "pace"} <= words


def test_speed_levels_are_separated_in_duration():
    voice = "en-us+m3"
    slow = synth.synthesize(SENTENCE, voice, rate=synth.SPEED["slow"][1])
    normal = synth.synthesize(SENTENCE, voice, rate=synth.SPEED["normal"][1])
    fast = synth.synthesize(SENTENCE, voice, rate=synth.SPEED["fast"][0])
    assert len(slow) > 1.2 * len(normal) and len(normal) > 1.2 * len(fast)


def test_pitch_levels_and_genders_are_separated_in_f0():
    """Every voice's high pitch lies above every voice's low one, so f0 alone tells them apart."""
    voices = [
        f"{synth.LANGUAGE}+{v}"
        for split in synth.VOICES.values()
        for variants in split.values()
        for v in variants
    ]
    f0 = {
        level: [_f0(synth.synthesize(SENTENCE, v, pitch=p)) for v in voices for p in (lo, hi)]
        for level, (lo, hi) in synth.PITCH.items()
    }
    assert max(f0["low"]) < min(f0["high"]), f0
    male = _f0(synth.synthesize(SENTENCE, "en-us+m3"))
    female = _f0(synth.synthesize(SENTENCE, "en-us+f2"))
    assert female > 1.4 * male


def _speed_and_duration(split: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    clips = synth.plan_clips(split, n, 1, np.random.default_rng(seed), set())
    seconds = [sf.info(io.BytesIO(synth.render_clip(c)[1])).duration for c in clips]
    return np.array([c.speed for c in clips]), np.array(seconds)


def test_clip_duration_does_not_tell_the_speed():
    """The best two-threshold rule on duration, fit on one set of clips, is at chance on another
    (before clip lengths were drawn independently of speed, duration alone read speed at 0.76)."""
    levels = grammar.DIMENSIONS["speed"]
    train_speed, train_s = _speed_and_duration("train", 240, 0)
    test_speed, test_s = _speed_and_duration("test", 240, 1)

    def fit(low: float, high: float) -> tuple[float, list[str]]:
        bins = np.digitize(train_s, [low, high])
        names = [
            max(levels, key=lambda lv: np.sum((bins == b) & (train_speed == lv))) for b in range(3)
        ]
        return float(np.mean(np.array(names)[bins] == train_speed)), names

    cuts = np.quantile(train_s, np.linspace(0.05, 0.95, 19))
    fits = [(fit(lo, hi), (lo, hi)) for i, lo in enumerate(cuts) for hi in cuts[i:]]
    (_, names), bounds = max(fits, key=lambda f: f[0][0])
    accuracy = np.mean(np.array(names)[np.digitize(test_s, bounds)] == test_speed)
    assert abs(accuracy - 1 / 3) <= 0.05, accuracy
    for level in levels:  # and the lengths really are drawn alike
        assert abs(np.mean(test_s[test_speed == level]) - np.mean(test_s)) < 0.1


def test_test_speakers_never_speak_in_training(tiny_dataset_dir):
    train, test = synth.VOICES["train"], synth.VOICES["test"]
    for gender in ("male", "female"):
        assert not set(train[gender]) & set(test[gender])
        assert len(train[gender]) >= 8 and len(test[gender]) >= 3
    assert not set(train["male"]) & set(train["female"])
    splits = datasets.load_from_disk(str(tiny_dataset_dir))
    heard = set(splits["train"]["speaker"])
    assert heard and not heard & set(splits["test"]["speaker"])
    assert heard <= {f"{synth.LANGUAGE}+{v}" for vs in train.values() for v in vs}


def test_synthesis_does_not_depend_on_what_was_spoken_before():
    first = synth.synthesize(SENTENCE, "en-us+f3", rate=150, pitch=30)
    synth.synthesize("Something else entirely, spoken in between.", "en-us+m1", rate=300)
    assert np.array_equal(first, synth.synthesize(SENTENCE, "en-us+f3", rate=150, pitch=30))


def test_unknown_voice_variant_is_named():
    with pytest.raises(ValueError, match="nosuchvoice"):
        synth.synthesize(SENTENCE, "en-us+nosuchvoice")


def test_rows_follow_the_schema(tiny_dataset_dir):
    splits = datasets.load_from_disk(str(tiny_dataset_dir))
    assert set(splits) == {"train", "test"}
    train = splits["train"]
    assert tuple(train.column_names) == synth.COLUMNS
    assert sorted(set(train["task"])) == sorted(grammar.TASKS)
    for row in train:
        wav, rate = sf.read(io.BytesIO(row["audio"]))
        assert rate == 16_000 and 0.5 < len(wav) / rate < 10
        (turn,) = row["messages"]
        assert turn["role"] == "user"
        assert [p["type"] for p in turn["content"]] == ["audio", "text"]
        assert row["gender"] in ("male", "female") and row["pitch"] in ("low", "high")
        assert row["speed"] in ("slow", "normal", "fast")
        assert row["spoken"] == (row["task"] == "spoken")
        assert bool(row["target_audio_codes"]) == row["spoken"]
        assert 5 <= len(row["target_think"].split()) <= grammar.MAX_THINK_WORDS
        if row["task"] == "transcribe":
            assert row["label"] == row["target_answer"] == row["transcript"]
        elif row["task"] == "spoken":
            assert row["label"] == row["target_answer"]
            assert row["target_answer"] in grammar.spoken_replies()
            assert max(row["target_audio_codes"]) < 64
        else:
            assert row["label"] == row[row["task"]]
            assert row["label"] in row["target_answer"].lower()
    metadata = json.loads((tiny_dataset_dir.parent / "metadata.json").read_text())
    assert metadata["splits"]["train"]["rows"] == len(train)
    assert (tiny_dataset_dir.parent / "codec" / "codec_config.json").is_file()


def test_levels_are_balanced_per_task():
    clips = synth.plan_clips("train", 60, 1, np.random.default_rng(0), set())
    for task in grammar.TASKS:
        group = [c for c in clips if task in c.tasks]
        assert len(group) == 12
        assert sorted(c.gender for c in group).count("male") == 6
        assert [c.speed for c in group].count("fast") == 4


def test_same_seed_same_bytes_whatever_the_workers(tmp_path):
    args = ["--num-clips", "4", "--test-clips", "2", "--codebook-size", "16"]
    assert main(["make-data", str(tmp_path / "a"), *args, "--workers", "1"]) == 0
    assert main(["make-data", str(tmp_path / "b"), *args, "--workers", "2"]) == 0
    assert main(["make-data", str(tmp_path / "c"), *args, "--workers", "1", "--seed", "1"]) == 0
    a, b, c = (_digest(tmp_path / name) for name in "abc")
    assert "data/train/data-00000-of-00001.arrow" in a
    assert a == b
    assert a["data/train/data-00000-of-00001.arrow"] != c["data/train/data-00000-of-00001.arrow"]
