"""A stand-in speech tokenizer: waveform <-> discrete audio codes at 25 Hz.

Step-Audio 2 speaks in CosyVoice 2 codes (6561 of them, 25 Hz) and turns them back into sound with
a flow-matching detokenizer and a vocoder; neither can run in this project's CPU-only, offline
setting. ``KMeansCodec`` takes their place for the synthetic dataset and the tiny model: it
quantises stacks of four 10 ms log-mel frames (40 ms, so 25 codes per second like CosyVoice 2)
with k-means fitted on the synthetic corpus, and decodes with Griffin-Lim. It is a *stand-in*:
the codes carry coarse spectral shape, not the semantic content of real speech tokens, and its
audio is buzzy but of the right length and loudness.

Anything with ``encode``, ``decode``, ``sample_rate`` and ``codebook_size`` (the
``AudioTokenizer`` protocol) plugs in instead, e.g. a wrapper around the real CosyVoice 2
tokenizer and detokenizer. The codebook size must not exceed the policy's number of audio codes:
the default, 64, fits the demo's tiny model (``rlhf make-tiny --audio-codes 64``); a larger
codebook decodes a little better and gives the policy more codes to learn.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from transformers.audio_utils import mel_filter_bank

CONFIG_NAME = "codec_config.json"
WEIGHTS_NAME = "codebook.safetensors"


@runtime_checkable
class AudioTokenizer(Protocol):
    """Speech tokenizer + detokenizer: what the data pipeline and rewards need of one."""

    sample_rate: int
    codebook_size: int

    def encode(self, wav: np.ndarray) -> list[int]:
        """Codes of a mono waveform at ``sample_rate``."""
        ...

    def decode(self, codes: Sequence[int]) -> np.ndarray:
        """A mono float32 waveform at ``sample_rate`` for ``codes``."""
        ...


class KMeansCodec:
    """k-means over stacked log-mel frames (encode) and Griffin-Lim (decode); see module doc.

    ``codebook``: ``[codebook_size, stack * n_mels]`` centroids in natural-log mel magnitude.
    """

    sample_rate = 16_000
    n_fft = 512
    hop_length = 160  # 100 mel frames per second ...
    stack = 4  # ... stacked by four: one code per 640 samples, 25 Hz
    n_mels = 80
    floor = 1e-5  # added before the log, so silence is finite

    def __init__(self, codebook: np.ndarray, griffin_lim_iters: int = 32):
        codebook = np.asarray(codebook, dtype=np.float32)
        if codebook.ndim != 2 or codebook.shape[1] != self.stack * self.n_mels:
            raise ValueError(
                f"codebook must be [K, {self.stack * self.n_mels}], got {codebook.shape}"
            )
        self.codebook = codebook
        self.griffin_lim_iters = griffin_lim_iters
        self._window = torch.hann_window(self.n_fft)
        filters = mel_filter_bank(
            num_frequency_bins=self.n_fft // 2 + 1,
            num_mel_filters=self.n_mels,
            min_frequency=0.0,
            max_frequency=self.sample_rate / 2,
            sampling_rate=self.sample_rate,
            norm="slaney",
            mel_scale="slaney",
        ).T  # [n_mels, n_freqs]
        self._mel = torch.from_numpy(filters.astype(np.float32))
        self._mel_pinv = torch.linalg.pinv(self._mel)

    @property
    def codebook_size(self) -> int:
        return len(self.codebook)

    @property
    def samples_per_code(self) -> int:
        return self.hop_length * self.stack

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.samples_per_code

    # --- features ------------------------------------------------------------------------------

    def _stft(self, wav: torch.Tensor) -> torch.Tensor:
        return torch.stft(
            wav, self.n_fft, self.hop_length, window=self._window, center=True, return_complex=True
        )

    def features(self, wav: np.ndarray) -> np.ndarray:
        """``[num_codes, stack * n_mels]``: one row per 40 ms, the last one zero-padded."""
        wav = np.asarray(wav, dtype=np.float32)
        if wav.ndim != 1 or wav.size == 0:
            raise ValueError(f"expected a non-empty mono waveform, got shape {wav.shape}")
        num_codes = -(-wav.size // self.samples_per_code)
        padded = torch.zeros(num_codes * self.samples_per_code)
        padded[: wav.size] = torch.from_numpy(wav)
        magnitude = self._stft(padded).abs()[:, :-1]  # [n_freqs, 4 * codes]
        log_mel = torch.log(self._mel @ magnitude + self.floor)  # [n_mels, 4 * codes]
        return log_mel.T.reshape(num_codes, self.stack * self.n_mels).numpy()

    # --- codes ---------------------------------------------------------------------------------

    def encode(self, wav: np.ndarray) -> list[int]:
        """One code per 40 ms of 16 kHz audio (``ceil(len / 640)`` codes)."""
        return _nearest(
            torch.from_numpy(self.features(wav)), torch.from_numpy(self.codebook)
        ).tolist()

    def decode(self, codes: Sequence[int]) -> np.ndarray:
        """16 kHz float32 audio, ``640 * len(codes)`` samples, via Griffin-Lim."""
        codes = torch.as_tensor(codes, dtype=torch.long)
        if codes.ndim != 1 or codes.numel() == 0:
            raise ValueError("decode needs a non-empty sequence of codes")
        bad = codes[(codes < 0) | (codes >= self.codebook_size)]
        if bad.numel():
            raise ValueError(
                f"code {int(bad[0])} is outside the codebook [0, {self.codebook_size})"
            )
        log_mel = torch.from_numpy(self.codebook)[codes].reshape(-1, self.n_mels).T
        mel = (log_mel.exp() - self.floor).clamp(min=0.0)
        # No installed library inverts a mel spectrogram (torchaudio is not available), so by hand:
        # the filterbank's pseudo-inverse gives linear magnitudes, Griffin-Lim a phase for them.
        magnitude = (self._mel_pinv @ mel).clamp(min=0.0)
        magnitude = torch.cat([magnitude, magnitude[:, -1:]], dim=1)  # the frame features drop
        return self._griffin_lim(magnitude, len(codes) * self.samples_per_code)

    def _griffin_lim(self, magnitude: torch.Tensor, length: int) -> np.ndarray:
        """Fast Griffin-Lim (Perraudin et al., 2013: momentum 0.99) from a fixed random phase."""
        generator = torch.Generator().manual_seed(0)
        phase = torch.rand(magnitude.shape, generator=generator)
        angles = torch.polar(torch.ones_like(magnitude), 2 * torch.pi * phase)
        momentum = 0.99 / 1.99
        previous = torch.zeros_like(angles)
        for _ in range(self.griffin_lim_iters):
            wav = torch.istft(
                magnitude * angles, self.n_fft, self.hop_length, window=self._window, length=length
            )
            rebuilt = self._stft(wav)
            angles = rebuilt - momentum * previous
            angles = angles / (angles.abs() + 1e-16)
            previous = rebuilt
        wav = torch.istft(
            magnitude * angles, self.n_fft, self.hop_length, window=self._window, length=length
        )
        return wav.numpy().astype(np.float32)

    # --- fitting and files ---------------------------------------------------------------------

    @classmethod
    def fit(
        cls,
        wavs: Iterable[np.ndarray],
        codebook_size: int = 64,
        *,
        seed: int = 0,
        max_vectors: int = 10_000,
        iterations: int = 20,
    ) -> KMeansCodec:
        """Fit the codebook on 16 kHz clips. Deterministic for a given ``seed`` and input order."""
        codec = cls(np.zeros((1, cls.stack * cls.n_mels), np.float32))
        vectors = np.concatenate([codec.features(wav) for wav in wavs])
        rng = np.random.default_rng(seed)
        if len(vectors) > max_vectors:
            vectors = vectors[np.sort(rng.choice(len(vectors), max_vectors, replace=False))]
        if codebook_size < 1:
            raise ValueError(f"codebook_size must be at least 1, got {codebook_size}")
        if len(vectors) < codebook_size:
            raise ValueError(
                f"{len(vectors)} frames of audio cannot fit {codebook_size} codes; give more audio"
            )
        codec.codebook = _kmeans(torch.from_numpy(vectors), codebook_size, rng, iterations).numpy()
        return codec

    def save(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({"codebook": self.codebook}, str(directory / WEIGHTS_NAME))
        config = {
            "codec": type(self).__name__,
            "note": "stand-in for CosyVoice 2 speech tokens; see rlhf/data/codec.py",
            "sample_rate": self.sample_rate,
            "frame_rate": self.frame_rate,
            "codebook_size": self.codebook_size,
            "n_fft": self.n_fft,
            "hop_length": self.hop_length,
            "stack": self.stack,
            "n_mels": self.n_mels,
            "griffin_lim_iters": self.griffin_lim_iters,
        }
        (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | os.PathLike) -> KMeansCodec:
        directory = Path(directory)
        config_path = directory / CONFIG_NAME
        if not config_path.is_file():
            raise FileNotFoundError(f"{config_path}: no codec config (made by `rlhf make-data`)")
        config = json.loads(config_path.read_text())
        for key in ("sample_rate", "n_fft", "hop_length", "stack", "n_mels"):
            if config.get(key) != getattr(cls, key):
                raise ValueError(
                    f"{config_path}: {key}={config.get(key)!r}, this code expects "
                    f"{getattr(cls, key)!r}"
                )
        codebook = load_file(str(directory / WEIGHTS_NAME))["codebook"]
        return cls(codebook, griffin_lim_iters=config.get("griffin_lim_iters", 32))


def _nearest(vectors: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Index of the nearest center (squared Euclidean) for each vector."""
    return ((centers**2).sum(1) - 2.0 * vectors @ centers.T).argmin(dim=1)


def _kmeans(x: torch.Tensor, k: int, rng: np.random.Generator, iterations: int) -> torch.Tensor:
    """Lloyd's k-means with k-means++ seeding (no installed library has k-means)."""
    norms = (x**2).sum(1)

    def squared_distance(center: torch.Tensor) -> torch.Tensor:
        return (norms - 2.0 * x @ center + center @ center).clamp(min=0.0)

    centers = x.new_empty(k, x.shape[1])
    centers[0] = x[int(rng.integers(len(x)))]
    closest = squared_distance(centers[0])
    for j in range(1, k):
        weights = closest.double().numpy()
        total = weights.sum()
        index = rng.choice(len(x), p=weights / total) if total > 0 else rng.integers(len(x))
        centers[j] = x[int(index)]
        closest = torch.minimum(closest, squared_distance(centers[j]))
    assignment = None
    for _ in range(iterations):
        new_assignment = _nearest(x, centers)
        if assignment is not None and torch.equal(new_assignment, assignment):
            break
        assignment = new_assignment
        counts = torch.bincount(assignment, minlength=k)
        sums = x.new_zeros(k, x.shape[1]).index_add_(0, assignment, x)
        filled = counts > 0  # an empty cluster keeps its center
        centers[filled] = sums[filled] / counts[filled, None]
    return centers
