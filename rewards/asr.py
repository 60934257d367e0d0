"""Speech recognition for rewards, on transformers' ASR pipeline.

Any Whisper-family checkpoint (or other ``automatic-speech-recognition`` model) loads by path;
inputs are batched through the pipeline and resampled to the feature extractor's rate.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import soxr


class PipelineASR:
    """``asr(waveforms, sample_rate) -> list[str]`` backed by ``pipeline("automatic-speech-recognition")``.

    Args:
        model: path or hub id of the checkpoint (offline runs need a local path).
        device: passed to the pipeline (``"cpu"``, ``"cuda:0"``, an index); None = CPU.
        batch_size: waveforms per forward pass.
        generate_kwargs: e.g. ``{"language": "en", "max_new_tokens": 128}``.
    """

    def __init__(
        self,
        model: str,
        device: str | int | None = None,
        batch_size: int = 8,
        generate_kwargs: dict[str, Any] | None = None,
    ):
        from transformers import pipeline  # heavy: only when an ASR reward is built

        self.pipe = pipeline("automatic-speech-recognition", model=model, device=device)
        self.sample_rate = self.pipe.feature_extractor.sampling_rate
        self.batch_size = batch_size
        self.generate_kwargs = dict(generate_kwargs or {})

    def __call__(self, waveforms: list[np.ndarray], sample_rate: int) -> list[str]:
        inputs = [
            np.asarray(
                wav
                if sample_rate == self.sample_rate
                else soxr.resample(wav, sample_rate, self.sample_rate),
                dtype=np.float32,
            )
            for wav in waveforms
        ]
        if not inputs:
            return []
        kwargs = {"generate_kwargs": self.generate_kwargs} if self.generate_kwargs else {}
        outputs = self.pipe(inputs, batch_size=self.batch_size, **kwargs)
        return [out["text"].strip() for out in outputs]

    def __repr__(self) -> str:
        return f"PipelineASR({self.pipe.model.name_or_path!r})"
