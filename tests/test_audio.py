"""Tests for the audio front end: decoding, mixing, resampling, log-mel, patch counts, batching."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
import torch

from rollouts.audio import (
    CHUNK_SAMPLES,
    SAMPLE_RATE,
    AudioError,
    batch_mels,
    load_audio,
    log_mel,
    num_audio_tokens,
    split_clip,
)


def sine(freq: float, seconds: float, rate: int = SAMPLE_RATE, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(wav: np.ndarray, rate: int = SAMPLE_RATE) -> float:
    spectrum = np.abs(np.fft.rfft(wav * np.hanning(len(wav))))
    return float(np.argmax(spectrum) * rate / len(wav))


# ---------------------------------------------------------------- load_audio


@pytest.mark.parametrize("ext", ["wav", "flac", "ogg", "mp3"])
def test_file_round_trip(tmp_path, ext):
    wav = sine(440.0, 0.5)
    path = tmp_path / f"clip.{ext}"
    sf.write(path, wav, SAMPLE_RATE)
    out = load_audio(path)
    assert out.dtype == np.float32 and out.ndim == 1
    if ext in ("wav", "flac"):  # lossless (16-bit PCM)
        np.testing.assert_allclose(out, wav, atol=1e-4)
    else:  # lossy codecs: same length (give or take codec delay) and the same tone
        assert abs(len(out) - len(wav)) < 0.1 * len(wav)
        assert abs(peak_hz(out) - 440.0) < 5.0
    assert np.array_equal(load_audio(str(path)), out)


def test_bytes_input_matches_file(tmp_path):
    wav = sine(300.0, 0.25)
    buffer = io.BytesIO()
    sf.write(buffer, wav, SAMPLE_RATE, format="FLAC")
    np.testing.assert_allclose(load_audio(buffer.getvalue(), name="row 3"), wav, atol=1e-4)


def test_multichannel_file_is_averaged(tmp_path):
    channels = np.stack([sine(200.0, 0.2), sine(500.0, 0.2), np.zeros(3200, np.float32)], axis=1)
    path = tmp_path / "three.wav"
    sf.write(path, channels, SAMPLE_RATE, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path), channels.mean(axis=1), atol=1e-6)


def test_stereo_array_is_averaged():
    stereo = np.stack([np.full(100, 0.2), np.full(100, -0.6)], axis=1).astype(np.float32)
    np.testing.assert_allclose(load_audio(stereo), np.full(100, -0.2), atol=1e-7)


def test_resampling_preserves_frequency(tmp_path):
    wav = sine(1000.0, 1.0, rate=44_100)
    out = load_audio(wav, sample_rate=44_100)
    assert len(out) == pytest.approx(SAMPLE_RATE, abs=2)
    assert peak_hz(out) == pytest.approx(1000.0, abs=2.0)
    path = tmp_path / "cd.wav"
    sf.write(path, wav, 44_100)
    assert peak_hz(load_audio(path)) == pytest.approx(1000.0, abs=2.0)


def test_integer_pcm_is_scaled():
    np.testing.assert_allclose(
        load_audio(np.array([-32768, 0, 16384], dtype=np.int16)), [-1.0, 0.0, 0.5]
    )
    np.testing.assert_allclose(load_audio(np.array([-(2**31), 2**30], dtype=np.int32)), [-1, 0.5])
    np.testing.assert_allclose(load_audio(np.array([0, 128, 192], dtype=np.uint8)), [-1, 0, 0.5])


def test_widened_integers_are_read_at_the_narrowest_pcm_width():
    # JSON and datasets hand integer PCM back as 64-bit ints: the width comes from the values.
    np.testing.assert_allclose(load_audio(np.array([-32768, 0, 16384])), [-1.0, 0.0, 0.5])
    np.testing.assert_allclose(load_audio(np.array([-(2**31), 2**30])), [-1.0, 0.5])
    np.testing.assert_array_equal(load_audio(np.zeros(4, np.int64)), np.zeros(4))
    with pytest.raises(AudioError, match=r"row 2: .*never negative"):
        load_audio(np.array([128, 255, 0, 128]), name="row 2")  # unsigned 8-bit, widened
    with pytest.raises(AudioError, match=r"row 2: .*exceed 32-bit PCM"):
        load_audio(np.array([0, -(2**40)]), name="row 2")


def test_floats_far_outside_full_scale_are_refused(tmp_path):
    path = tmp_path / "unscaled.wav"
    sf.write(path, sine(200.0, 0.1, amp=20_000.0), SAMPLE_RATE, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"unscaled\.wav: float samples reach 20000"):
        load_audio(path)
    assert load_audio(sine(200.0, 0.1, amp=1.5)).max() == pytest.approx(1.5, abs=1e-3)


def test_array_is_copied_not_aliased():
    wav = np.zeros(10, np.float32)
    load_audio(wav)[0] = 1.0
    assert wav[0] == 0.0


def test_sample_rate_with_encoded_audio_is_rejected(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, sine(100.0, 0.1), SAMPLE_RATE)
    with pytest.raises(TypeError, match="only for arrays"):
        load_audio(path, sample_rate=SAMPLE_RATE)


def _write_bytes(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda d: d / "missing.wav", "not found"),
        (lambda d: _write_bytes(d / "empty.wav", b""), "empty"),
        (lambda d: _write_bytes(d / "junk.wav", b"definitely not a RIFF header" * 4), "decode"),
    ],
)
def test_bad_files_name_the_file(tmp_path, make, problem):
    path = make(tmp_path)
    with pytest.raises(AudioError, match=problem) as info:
        load_audio(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_zero_length_file_names_the_file(tmp_path):
    path = tmp_path / "silent.wav"
    sf.write(path, np.zeros(0, np.float32), SAMPLE_RATE)  # a bare 44-byte header
    assert path.stat().st_size > 0
    with pytest.raises(AudioError, match="no samples") as info:
        load_audio(path)
    assert "silent.wav" in str(info.value)


def test_name_is_used_for_files_too(tmp_path):
    with pytest.raises(AudioError, match=r"row 5 \(.*gone.wav\)"):
        load_audio(tmp_path / "gone.wav", name="row 5")


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        (b"", "empty"),
        (b"\x00\x01garbage" * 50, "decode"),
        (np.array([0.1, np.nan], np.float32), "NaN"),
        (np.array([np.inf, 0.0]), "infinite"),
        (np.zeros(0, np.float32), "no samples"),
        (np.zeros((2, 100), np.float32), "channels-first"),
        (np.array(["a", "b"]), "dtype"),
    ],
)
def test_bad_bytes_and_arrays_name_the_row(source, problem):
    with pytest.raises(AudioError, match=problem) as info:
        load_audio(source, name="row 17")
    assert "row 17" in str(info.value)


def test_truncated_flac_bytes_raise(tmp_path):
    buffer = io.BytesIO()
    sf.write(buffer, sine(300.0, 0.25), SAMPLE_RATE, format="FLAC")
    with pytest.raises(AudioError, match="row 9"):
        load_audio(buffer.getvalue()[:20], name="row 9")


# ---------------------------------------------------------------- log_mel


def slaney_filters(n_mels: int = 128, n_fft: int = 400, rate: int = SAMPLE_RATE) -> np.ndarray:
    """librosa.filters.mel(sr, n_fft, n_mels) with htk=False, norm="slaney", written out."""
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, np.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp

    def hz_to_mel(f):
        f = np.asarray(f, dtype=np.float64)
        return np.where(
            f < min_log_hz,
            f / f_sp,
            min_log_mel + np.log(np.maximum(f, min_log_hz) / min_log_hz) / logstep,
        )

    def mel_to_hz(m):
        return np.where(m < min_log_mel, m * f_sp, min_log_hz * np.exp(logstep * (m - min_log_mel)))

    fft_freqs = np.linspace(0, rate / 2, 1 + n_fft // 2)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(rate / 2), n_mels + 2))
    widths = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    return weights * (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]


def numpy_log_mel(wav: np.ndarray) -> np.ndarray:
    """Step-Audio 2's log-mel (Whisper's, 479-sample right pad, no 30 s pad) in float64 numpy."""
    x = np.pad(wav.astype(np.float64), (0, 479))
    x = np.pad(x, 200, mode="reflect")  # center=True
    n_frames = 1 + (len(x) - 400) // 160
    frames = np.stack([x[i * 160 : i * 160 + 400] for i in range(n_frames)])
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)  # periodic Hann
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2
    mel = slaney_filters() @ power[:-1].T
    log_spec = np.log10(np.maximum(mel, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return (log_spec + 4.0) / 4.0


def test_log_mel_matches_numpy_recipe():
    rng = np.random.default_rng(0)
    wav = sine(700.0, 0.3) + 0.05 * rng.standard_normal(4800).astype(np.float32)
    mel = log_mel(wav)
    assert mel.shape == (128, (4800 + 479) // 160) and mel.dtype == np.float32
    np.testing.assert_allclose(mel, numpy_log_mel(wav), atol=1e-4)


def test_log_mel_floor_is_eight_below_max():
    mel = log_mel(np.concatenate([np.zeros(1600, np.float32), sine(440.0, 0.1)]))
    assert mel.min() == pytest.approx(mel.max() - 2.0, abs=1e-5)  # 8 decades / 4


def test_mel_filters_match_librosa_and_whisper():
    from rollouts.audio import _mel_filters

    filters = _mel_filters().numpy()
    assert filters.shape == (128, 201)
    np.testing.assert_allclose(filters, slaney_filters(), rtol=1e-5, atol=1e-8)
    whisper = pytest.importorskip("transformers").WhisperFeatureExtractor(feature_size=128)
    np.testing.assert_allclose(filters, whisper.mel_filters.T, rtol=1e-5, atol=1e-8)


def test_log_mel_matches_whisper_feature_extractor_on_padded_audio():
    from transformers import WhisperFeatureExtractor

    wav = sine(250.0, 0.5) * np.linspace(0, 1, 8000, dtype=np.float32)
    whisper = WhisperFeatureExtractor(feature_size=128)
    ref = whisper(np.pad(wav, (0, 479)), sampling_rate=SAMPLE_RATE, padding=False)
    np.testing.assert_allclose(log_mel(wav), ref["input_features"][0], atol=1e-4)


def test_log_mel_rejects_bad_shapes():
    with pytest.raises(ValueError, match="1-D"):
        log_mel(np.zeros((2, 100), np.float32))
    with pytest.raises(ValueError, match="non-empty"):
        log_mel(np.zeros(0, np.float32))


# ---------------------------------------------------------------- patch counts, split, batch


@pytest.mark.parametrize(
    ("seconds", "frames", "tokens"), [(1, 102, 13), (10, 1002, 125), (25, 2502, 313)]
)
def test_patch_counts_from_real_frame_counts(seconds, frames, tokens):
    mel = log_mel(np.zeros(seconds * SAMPLE_RATE, np.float32))
    assert mel.shape == (128, frames)
    assert num_audio_tokens(mel.shape[1]) == tokens


def test_num_audio_tokens_follows_encoder_and_adaptor_strides():
    for frames in range(0, 400):
        encoder_len = (frames - 2 + 1) // 2 // 2  # conv2 stride 2, avg-pool 2
        adaptor_len = (encoder_len + 2 * 1 - 3) // 2 + 1  # Conv1d k3 s2 p1
        assert num_audio_tokens(frames) == adaptor_len
    assert num_audio_tokens(4) == 0 and num_audio_tokens(5) == 1
    with pytest.raises(ValueError):
        num_audio_tokens(-1)


def test_split_clip_every_25_seconds():
    wav = np.arange(2 * CHUNK_SAMPLES + 16_000, dtype=np.float32)
    pieces = split_clip(wav)
    assert [len(p) for p in pieces] == [CHUNK_SAMPLES, CHUNK_SAMPLES, 16_000]
    np.testing.assert_array_equal(np.concatenate(pieces), wav)
    assert len(split_clip(wav[:CHUNK_SAMPLES])) == 1
    assert split_clip(wav[:0]) == []


def test_batch_mels_pads_to_longest_clip():
    lengths = [16_000, 4_000, 321]
    mels = [log_mel(sine(440.0, n / SAMPLE_RATE)) for n in lengths]
    features, feature_lens = batch_mels(mels)
    assert features.shape == (3, 128, 102) and features.dtype == torch.float32
    assert feature_lens.dtype == torch.long
    assert feature_lens.tolist() == [mel.shape[1] - 2 for mel in mels]
    assert feature_lens.tolist() == [-(-n // 160) for n in lengths]  # frames covering real audio
    for i, mel in enumerate(mels):
        t = mel.shape[1]
        np.testing.assert_array_equal(features[i, :, :t].numpy(), mel)
        assert torch.all(features[i, :, t:] == 0)


def test_batch_mels_rejects_bad_input():
    with pytest.raises(ValueError, match="at least one"):
        batch_mels([])
    with pytest.raises(ValueError, match="mel 1"):
        batch_mels([np.zeros((128, 5), np.float32), np.zeros((80, 5), np.float32)])
