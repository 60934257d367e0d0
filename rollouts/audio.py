"""Audio front end of Step-Audio 2: waveforms in, log-mel features and patch counts out.

Everything the model sees of a sound passes through here, so this module matches the released
Step-Audio 2 inference code exactly:

* ``load_audio`` decodes files, bytes or arrays to 16 kHz mono float32 (soundfile + soxr);
* ``MIN_CLIP_SAMPLES`` and ``MAX_CLIP_SECONDS`` bound the clips a dataset row may hold;
* ``split_clip`` cuts long audio into 25 s pieces, each encoded as its own clip;
* ``log_mel`` is Whisper's 128-bin log-mel with a 479-sample right pad and *no* 30 s padding;
* ``num_audio_tokens`` is how many ``<audio_patch>`` tokens a clip of T frames occupies;
* ``batch_mels`` pads a batch to its longest clip and returns the lengths the encoder masks with.
"""

from __future__ import annotations

import functools
import io
import os

import numpy as np
import soundfile as sf
import soxr
import torch
from transformers.audio_utils import mel_filter_bank

from rewards.errors import UserError

SAMPLE_RATE = 16_000
CHUNK_SAMPLES = 25 * SAMPLE_RATE  # 400 000 samples: clips are split every 25 s
N_MELS = 128
N_FFT = 400
HOP_LENGTH = 160
RIGHT_PAD = 479  # samples appended before the STFT, as in StepFun's log_mel_spectrogram

MIN_CLIP_SAMPLES = 5 * HOP_LENGTH - RIGHT_PAD
"""The shortest clip the model can hear: 321 samples (20 ms at 16 kHz).

A clip of n samples gives T = (n + 479) // 160 mel frames; the encoder keeps T - 2 of them and
halves that twice (conv2 stride 2, average pool 2), then the adaptor (stride 2) makes the
``<audio_patch>`` tokens. Five frames are the fewest that leave one token (``num_audio_tokens``);
anything shorter reaches the model as an empty ``<audio_start><audio_end>``.
"""

MAX_CLIP_SECONDS = 30.0
"""Default longest clip a dataset row may hold, in seconds.

Not a limit of the model: longer clips are cut into 25 s pieces (``split_clip``), each encoded as
its own 30 s-window clip, so the real bound is the decoder's context at 12.5 audio tokens per
second (313 per 25 s piece). It is a guard against data mistakes: a stray 10-minute recording
costs 7 500 prompt tokens and slows every step it lands in roughly tenfold. 30 s is one encoder
window, the length of most speech-understanding clips; raise it knowingly for long-form audio.
"""

MAX_FLOAT_PEAK = 4.0
"""Largest absolute float sample accepted (12 dB over full scale).

Float waveforms live in [-1, 1]; resampling or mixing can overshoot a little. Far larger values
are integer PCM saved as floats, which the log-mel would shift far from anything the encoder was
trained on, so they are refused rather than scaled by guesswork.
"""


class AudioError(UserError):
    """Audio that cannot be used; the message names the file, or the caller's ``name``."""


def load_audio(
    source: str | os.PathLike | bytes | np.ndarray,
    sample_rate: int | None = None,
    *,
    name: str | None = None,
) -> np.ndarray:
    """Return ``source`` as a 16 kHz mono float32 waveform.

    ``source`` is a path, encoded bytes (any format libsndfile reads: wav, flac, ogg, mp3, ...)
    or an array of samples. Encoded audio carries its own rate, so ``sample_rate`` is only for
    arrays (default 16 kHz). Arrays are ``(frames,)`` or ``(frames, channels)`` as soundfile
    returns them; integer arrays are PCM, scaled to [-1, 1] as ``_array_to_float`` says.
    Channels are averaged, other rates are resampled with soxr.

    Raises ``AudioError`` naming the file (or ``name``, e.g. ``"row 17"``) for a missing, empty,
    corrupt or zero-length source, for non-finite samples and for float samples beyond
    ``MAX_FLOAT_PEAK``.
    """
    if isinstance(source, np.ndarray):
        label = name or "audio array"
        rate = SAMPLE_RATE if sample_rate is None else sample_rate
        samples = _array_to_float(source, label)
    elif sample_rate is not None:
        raise TypeError("sample_rate is only for arrays; encoded audio carries its own rate")
    elif isinstance(source, (bytes, bytearray)):
        label = name or "audio bytes"
        if not source:
            raise AudioError(f"{label}: empty audio bytes")
        samples, rate = _decode(io.BytesIO(source), label)
    elif isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        label = f"{name} ({path})" if name else path
        if not os.path.isfile(path):
            raise AudioError(f"{label}: audio file not found")
        if os.path.getsize(path) == 0:
            raise AudioError(f"{label}: empty audio file")
        samples, rate = _decode(path, label)
    else:
        raise TypeError(f"cannot load audio from {type(source).__name__}")

    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate <= 0:
        raise AudioError(f"{label}: invalid sample rate {rate!r}")
    if samples.ndim == 2:
        samples = samples.mean(axis=1, dtype=np.float32)
    if samples.size == 0:
        raise AudioError(f"{label}: audio has no samples")
    if not np.isfinite(samples).all():
        raise AudioError(f"{label}: audio contains NaN or infinite samples")
    peak = float(np.abs(samples).max())
    if peak > MAX_FLOAT_PEAK:
        raise AudioError(
            f"{label}: float samples reach {peak:g}, far outside [-1, 1]; this looks like "
            "integer PCM stored as floats: store the integers themselves, or divide by 32768 "
            "(16-bit) first"
        )
    if rate != SAMPLE_RATE:
        samples = soxr.resample(samples, int(rate), SAMPLE_RATE)
    return np.ascontiguousarray(samples, dtype=np.float32)


def _decode(file: str | io.BytesIO, label: str) -> tuple[np.ndarray, int]:
    """Decode with libsndfile; soundfile already scales integer PCM to [-1, 1]."""
    try:
        samples, rate = sf.read(file, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError, EOFError) as err:
        raise AudioError(f"{label}: cannot decode audio ({err})") from err
    return samples, rate


def _array_to_float(array: np.ndarray, label: str) -> np.ndarray:
    """Samples as float32, integer PCM scaled to [-1, 1], shape ``(frames[, channels])``.

    Integer dtypes are PCM at their full scale: int16 / 32768, int32 / 2**31, and unsigned ones
    offset binary (uint8: (x - 128) / 128, as 8-bit WAV). 64-bit integers are never PCM as
    stored: they are narrower PCM that JSON or Arrow widened (``datasets`` returns an int16
    column as Python ints), so they are read at the narrowest width that holds them
    (``_narrow_widened_pcm``).
    """
    if array.ndim not in (1, 2):
        raise AudioError(f"{label}: expected (frames,) or (frames, channels), got {array.shape}")
    if array.ndim == 2 and array.shape[1] > array.shape[0]:
        raise AudioError(
            f"{label}: array of shape {array.shape} looks channels-first; pass (frames, channels)"
        )
    if np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float32)
    if np.issubdtype(array.dtype, np.integer) and array.dtype.itemsize == 8:
        array = _narrow_widened_pcm(array, label)
    if np.issubdtype(array.dtype, np.signedinteger):
        return (array / -float(np.iinfo(array.dtype).min)).astype(np.float32)
    if np.issubdtype(array.dtype, np.unsignedinteger):  # offset binary, e.g. 8-bit WAV
        half = float(np.iinfo(array.dtype).max // 2 + 1)
        return ((array - half) / half).astype(np.float32)
    raise AudioError(f"{label}: unsupported sample dtype {array.dtype}")


def _narrow_widened_pcm(array: np.ndarray, label: str) -> np.ndarray:
    """64-bit integer samples as the 16- or 32-bit PCM they were before being widened.

    Values within int16 are 16-bit PCM (the common case), within int32 32-bit PCM; a 32-bit
    recording quieter than -96 dBFS would be misread as 16-bit, an accepted ambiguity. Samples
    that are never negative cannot be signed PCM: most likely unsigned 8-bit widened to ints,
    which cannot be told from quiet 16-bit audio, so it is refused rather than guessed.
    """
    if array.size == 0:
        return array.astype(np.int16)
    low, high = int(array.min()), int(array.max())
    if low >= 0 and high > 0:
        raise AudioError(
            f"{label}: integer samples are never negative (0 to {high}), so they are not signed "
            "PCM; store unsigned 8-bit audio as floats in [-1, 1] or as an encoded file"
        )
    for dtype in (np.int16, np.int32):
        if np.iinfo(dtype).min <= low and high <= np.iinfo(dtype).max:
            return array.astype(dtype)
    raise AudioError(f"{label}: integer samples from {low} to {high} exceed 32-bit PCM")


def split_clip(wav: np.ndarray) -> list[np.ndarray]:
    """Cut a waveform into consecutive pieces of at most 25 s (``CHUNK_SAMPLES``).

    Step-Audio 2 encodes each piece as its own clip (one ``<audio_start>`` … ``<audio_end>`` span
    each), because the encoder's positional table holds at most 30 s. The last piece keeps
    whatever remains, however short, exactly as the reference code slices.
    """
    return [wav[start : start + CHUNK_SAMPLES] for start in range(0, len(wav), CHUNK_SAMPLES)]


@functools.cache
def _mel_filters() -> torch.Tensor:
    """128 slaney-scale, slaney-normalised filters ``[128, 201]`` (= librosa / Whisper's)."""
    filters = mel_filter_bank(
        num_frequency_bins=1 + N_FFT // 2,
        num_mel_filters=N_MELS,
        min_frequency=0.0,
        max_frequency=SAMPLE_RATE / 2,
        sampling_rate=SAMPLE_RATE,
        norm="slaney",
        mel_scale="slaney",
    )
    return torch.from_numpy(filters.T.astype(np.float32))


def log_mel(wav: np.ndarray) -> np.ndarray:
    """128-bin log-mel spectrogram ``[128, T]`` of a 16 kHz mono clip, T = (len + 479) // 160.

    Whisper's recipe with Step-Audio 2's twist: 479 zero samples are appended first, and the
    result is never padded or trimmed to 30 s. 1 s gives T = 102, 25 s gives T = 2502.
    """
    wav = np.asarray(wav)
    if wav.ndim != 1 or wav.size == 0:
        raise ValueError(f"log_mel expects a non-empty 1-D waveform, got shape {wav.shape}")
    audio = torch.from_numpy(np.array(wav, dtype=np.float32))  # a copy: inputs may be read-only
    audio = torch.nn.functional.pad(audio, (0, RIGHT_PAD))
    stft = torch.stft(
        audio,
        N_FFT,
        HOP_LENGTH,
        window=torch.hann_window(N_FFT),  # periodic, as Whisper
        center=True,
        pad_mode="reflect",
        return_complex=True,
    )
    power = stft[:, :-1].abs() ** 2
    log_spec = torch.clamp(_mel_filters() @ power, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).numpy()


def num_audio_tokens(num_frames: int) -> int:
    """Number of ``<audio_patch>`` tokens (adaptor outputs) for a clip of ``num_frames`` mel frames.

    The Hugging Face formula: the encoder sees T - 2 frames, conv2 (stride 2) and the average pool
    halve it, the adaptor conv (k 3, s 2, p 1) halves it again. vLLM/SGLang drop the -2 and are
    off by one for about a quarter of lengths; the released checkpoint was run with this one.
    Clips under 321 samples (T < 5) get 0 tokens.
    """
    if num_frames < 0:
        raise ValueError(f"num_frames must be >= 0, got {num_frames}")
    encoder_len = (num_frames - 2 + 1) // 2 // 2
    return (encoder_len + 2 - 3) // 2 + 1


def batch_mels(mels: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack clips' mels into ``features [N, 128, Tmax]`` (float32) and ``feature_lens [N]`` (long).

    Shorter clips are zero-padded on the right to the batch's longest clip, never to 30 s.
    ``feature_lens`` is T - 2 per clip (= ceil(samples / 160): the frames that cover real audio,
    leaving out the two extra frames the 479-sample pad produces), as the reference ``padding_mels``
    sets it. The encoder masks the frames at or past that length as attention keys (so batch
    padding is ignored) and keeps ``num_audio_tokens(T)`` adaptor outputs per clip.
    """
    if not mels:
        raise ValueError("batch_mels needs at least one mel spectrogram")
    for i, mel in enumerate(mels):
        if mel.ndim != 2 or mel.shape[0] != N_MELS:
            raise ValueError(f"mel {i}: expected shape [{N_MELS}, T], got {tuple(mel.shape)}")
    lengths = [mel.shape[1] for mel in mels]
    features = torch.zeros(len(mels), N_MELS, max(lengths), dtype=torch.float32)
    for i, mel in enumerate(mels):
        features[i, :, : lengths[i]] = torch.as_tensor(mel, dtype=torch.float32)
    feature_lens = torch.tensor(lengths, dtype=torch.long) - 2
    return features, feature_lens
