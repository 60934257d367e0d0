"""The stand-in k-means audio codec: code rate, round trip, files, bad codes."""

from __future__ import annotations

import numpy as np
import pytest

from rlhf.data import grammar, synth
from rlhf.data.codec import AudioTokenizer, KMeansCodec


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    voices = ("en-us+m3", "en-us+f2") * 3
    return [synth.pcm_to_float(synth.synthesize(grammar.sentence(rng), v)) for v in voices]


@pytest.fixture(scope="module")
def codec(clips) -> KMeansCodec:
    return KMeansCodec.fit(clips, codebook_size=32, seed=0)


def _envelope(wav: np.ndarray, hop: int = 640) -> np.ndarray:
    n = len(wav) // hop
    return np.sqrt((wav[: n * hop].reshape(n, hop) ** 2).mean(1))


def test_codec_is_an_audio_tokenizer_at_25_hz(codec, clips):
    assert isinstance(codec, AudioTokenizer)
    assert codec.sample_rate == 16_000 and codec.codebook_size == 32 and codec.frame_rate == 25
    codes = codec.encode(clips[0])
    assert len(codes) == -(-len(clips[0]) // 640)
    assert all(isinstance(c, int) and 0 <= c < 32 for c in codes)
    assert len(set(codes)) > 8


def test_round_trip_keeps_length_energy_and_envelope(codec, clips):
    wav = clips[1]
    decoded = codec.decode(codec.encode(wav))
    assert decoded.dtype == np.float32
    assert abs(len(decoded) - len(wav)) < 640
    ratio = np.sqrt((decoded**2).mean() / (wav**2).mean())
    assert 0.4 < ratio < 2.5
    original = _envelope(wav)
    assert np.corrcoef(original, _envelope(decoded)[: len(original)])[0, 1] > 0.7


def test_fit_is_deterministic_and_save_load_round_trips(codec, clips, tmp_path):
    again = KMeansCodec.fit(clips, codebook_size=32, seed=0)
    assert np.array_equal(again.codebook, codec.codebook)
    codec.save(tmp_path / "codec")
    loaded = KMeansCodec.load(tmp_path / "codec")
    assert np.array_equal(loaded.codebook, codec.codebook)
    assert loaded.encode(clips[2]) == codec.encode(clips[2])
    assert np.array_equal(loaded.decode([1, 2, 3]), codec.decode([1, 2, 3]))


def test_bad_codes_and_missing_files_are_named(codec, tmp_path):
    with pytest.raises(ValueError, match="code 32"):
        codec.decode([0, 32])
    with pytest.raises(ValueError, match="non-empty"):
        codec.decode([])
    with pytest.raises(FileNotFoundError, match=r"codec_config\.json"):
        KMeansCodec.load(tmp_path)
    with pytest.raises(ValueError, match="cannot fit 32 codes"):
        KMeansCodec.fit([np.zeros(640, np.float32)], codebook_size=32)
