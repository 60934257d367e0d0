"""Step-Audio 2 as a transformers model: Whisper-style audio encoder -> adaptor -> Qwen2 decoder.

Parameter names and the compute path follow the released Step-Audio-2-mini (8.3 B parameters in
832 tensors), so its checkpoint loads with no missing or unexpected key. Unlike the released code, audio is encoded once
per prompt (the prefill) and decoding runs on the decoder's KV cache.

Audio lengths: a batch of mels is zero-padded to its longest clip and `feature_lens[n]` is the
released `wav_lens`, i.e. the clip's mel frame count T minus 2 (`rollouts.audio.batch_mels`). The
encoder computes every clip exactly as if it were alone in the batch (padding never leaks into a
clip's embeddings), and clip n fills `num_audio_tokens(T)` patch positions.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Cache, GenerationMixin, PreTrainedModel, Qwen2Model
from transformers import initialization as init
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep
from transformers.utils import can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg

from .configuration_step_audio_2 import StepAudio2Config, StepAudio2EncoderConfig

ADAPTER_WIDTH = 2048  # fixed in the released adaptor, not part of the config


def _sinusoids(length: int, width: int) -> torch.Tensor:
    """Whisper's positional table; the released checkpoint stores a trained copy of it."""
    log_timescale = math.log(10000) / (width // 2 - 1)
    inv_timescales = torch.exp(-log_timescale * torch.arange(width // 2, dtype=torch.float32))
    angles = torch.arange(length, dtype=torch.float32)[:, None] * inv_timescales[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def _valid(lengths: torch.Tensor, size: int) -> torch.Tensor:
    """[N, size] bool: position < length, per row."""
    return torch.arange(size, device=lengths.device) < lengths[:, None]


class StepAudio2EncoderAttention(nn.Module):
    """Whisper attention with no key bias. The checkpoint scales q and k each by
    head_dim^-0.25, which is SDPA's 1/sqrt(head_dim) on the product. SDPA's fused kernels
    accumulate the softmax in fp32 without materialising the fp32 [N, heads, T, T] scores that
    eager attention keeps for the backward (125 MB per layer for one 25 s clip at Step-Audio 2's
    20 heads, 32 layers)."""

    def __init__(self, width: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width, bias=False)
        self.value = nn.Linear(width, width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, length, self.num_heads, width // self.num_heads).transpose(1, 2)

        attended = F.scaled_dot_product_attention(
            heads(self.query(x)),
            heads(self.key(x)),
            heads(self.value(x)),
            attn_mask=key_valid[:, None, None, :],
        )
        return self.out(attended.transpose(1, 2).reshape(batch, length, width))


class StepAudio2EncoderBlock(nn.Module):
    """Pre-LN transformer block with exact-GELU MLP (`mlp.0`, `mlp.2` as in the checkpoint)."""

    def __init__(self, width: int, num_heads: int):
        super().__init__()
        self.attn = StepAudio2EncoderAttention(width, num_heads)
        self.attn_ln = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)
        )
        self.mlp_ln = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_ln(x), key_valid)
        return x + self.mlp(self.mlp_ln(x))


class StepAudio2AudioEncoder(nn.Module):
    """Mel [N, n_mels, T] -> 25 Hz features [N, ~T/4, n_audio_state]."""

    def __init__(self, config: StepAudio2EncoderConfig):
        super().__init__()
        width = config.n_audio_state
        self.conv1 = nn.Conv1d(config.n_mels, width, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(width, width, kernel_size=3, stride=2, padding=1)
        self.positional_embedding = nn.Embedding(config.n_audio_ctx, width)
        self.blocks = nn.ModuleList(
            [
                StepAudio2EncoderBlock(width, config.n_audio_head)
                for _ in range(config.n_audio_layer)
            ]
        )
        self.avg_pooler = nn.AvgPool1d(2, stride=2)
        self.after_norm = nn.LayerNorm(width, eps=1e-5)

    def forward(self, features: torch.Tensor, feature_lens: torch.Tensor) -> torch.Tensor:
        num_frames = feature_lens + 2  # a clip's own mel frame count
        x = F.gelu(self.conv1(features))
        # Past its end, a clip alone would give conv2 zero padding: zero the padded frames.
        x = x * _valid(num_frames, x.shape[-1])[:, None, :].to(x.dtype)
        x = F.gelu(self.conv2(x)).transpose(1, 2)
        length = x.shape[1]
        if length > self.positional_embedding.num_embeddings:
            raise ValueError(
                f"audio too long: {features.shape[-1]} mel frames give {length} encoder positions, "
                f"more than n_audio_ctx={self.positional_embedding.num_embeddings}; split clips at "
                "25 s (rollouts.audio.split_clip)"
            )
        x = x + self.positional_embedding.weight[:length]
        # Keys from (wav_lens + 1) // 2 on are masked: the released mask of a lone clip.
        key_valid = _valid((feature_lens + 1) // 2, length)
        for block in self.blocks:
            x = block(x, key_valid)
        x = self.after_norm(self.avg_pooler(x.transpose(1, 2)).transpose(1, 2))
        # The adaptor conv reads one frame past a clip's last token: give it the zeros that a lone
        # clip would have there.
        alone = (num_frames + 1) // 2 // 2
        return x * _valid(alone, x.shape[1])[..., None].to(x.dtype)


class StepAudio2Adapter(nn.Module):
    """25 Hz encoder features -> 12.5 Hz decoder-width embeddings: gelu(conv) -> MLP with ReLU."""

    def __init__(self, config: StepAudio2EncoderConfig):
        super().__init__()
        width = config.n_audio_state
        self.conv = nn.Conv1d(width, width, config.kernel_size, config.adapter_stride, padding=1)
        self.linear1 = nn.Linear(width, ADAPTER_WIDTH)
        self.linear2 = nn.Linear(ADAPTER_WIDTH, config.llm_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.conv(x.transpose(1, 2))).transpose(1, 2)
        return self.linear2(F.relu(self.linear1(x)))


class StepAudio2PreTrainedModel(PreTrainedModel):
    config_class = StepAudio2Config
    base_model_prefix = "model"
    input_modalities = ("audio", "text")
    supports_gradient_checkpointing = True
    _no_split_modules: ClassVar[list[str]] = ["Qwen2DecoderLayer", "StepAudio2EncoderBlock"]
    # These concern the decoder (a Qwen2Model); the encoder has its own fp32-softmax attention.
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True

    def _init_weights(self, module: nn.Module) -> None:
        encoder = getattr(self, "encoder", None)
        if module is getattr(encoder, "positional_embedding", None):
            init.copy_(module.weight, _sinusoids(*module.weight.shape))
        elif encoder is not None and module in (encoder.conv1, encoder.conv2):
            # He init: with the default N(0, 0.02) a random encoder's convolutions shrink the
            # mel input to noise, and a tiny model trained from scratch cannot hear its audio
            init.kaiming_normal_(module.weight, nonlinearity="relu")
            init.zeros_(module.bias)
        else:
            super()._init_weights(module)


class StepAudio2ForCausalLM(StepAudio2PreTrainedModel, GenerationMixin):
    """Step-Audio 2 speech LLM with a causal-LM head.

    Audio enters as `input_features` [N, n_mels, T_max] (N clips, row-major over the batch) with
    `feature_lens` [N]; `embed_inputs` writes the adaptor outputs over the `<audio_patch>` tokens.
    """

    def __init__(self, config: StepAudio2Config):
        super().__init__(config)
        self.model = Qwen2Model(config.text_config)
        self.lm_head = nn.Linear(
            config.text_config.hidden_size, config.text_config.vocab_size, bias=False
        )
        self.encoder = StepAudio2AudioEncoder(config.audio_encoder_config)
        self.adapter = StepAudio2Adapter(config.audio_encoder_config)
        self.post_init()

    def num_audio_tokens(self, feature_lens: torch.Tensor) -> torch.Tensor:
        """Patch tokens per clip: conv2 (stride 2), pooling (2), adaptor conv; from `wav_lens`.

        For T mel frames (feature_lens = T - 2) this is the released `((T-2+1)//2//2 + 2 - 3)//2 + 1`.
        """
        audio = self.config.audio_encoder_config
        pooled = (feature_lens + 1) // 2 // 2
        return (pooled + 2 - audio.kernel_size) // audio.adapter_stride + 1

    def get_audio_features(
        self, input_features: torch.Tensor, feature_lens: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode N clips -> (embeddings [N, L, hidden] in the decoder dtype, tokens per clip [N]).

        Row n is valid up to tokens[n]; feature_lens=None means every clip fills the padded length.
        """
        num_clips, _, max_frames = input_features.shape
        if feature_lens is None:
            feature_lens = torch.full((num_clips,), max_frames - 2, device=input_features.device)
        feature_lens = feature_lens.to(device=input_features.device, dtype=torch.long)
        if feature_lens.shape != (num_clips,):
            raise ValueError(
                f"feature_lens has shape {tuple(feature_lens.shape)}, expected ({num_clips},): "
                "one length per clip in input_features"
            )
        if bool((feature_lens < 0).any() | (feature_lens + 2 > max_frames).any()):
            raise ValueError(
                f"feature_lens {feature_lens.tolist()} must lie in [0, {max_frames - 2}]: each is "
                f"a clip's mel frame count minus 2, and input_features holds {max_frames} frames"
            )
        dtype = self.encoder.conv1.weight.dtype
        audio = self.adapter(self.encoder(input_features.to(dtype), feature_lens))
        return audio.to(self.model.embed_tokens.weight.dtype), self.num_audio_tokens(feature_lens)

    def embed_inputs(
        self,
        input_ids: torch.LongTensor,
        input_features: torch.Tensor | None = None,
        feature_lens: torch.Tensor | None = None,
        clip_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token embeddings [B, L, hidden] with clip n written over the `<audio_patch>` run that
        follows the n-th `<audio_start>` (row-major). Raises ValueError when counts disagree.

        ``clip_index`` [N_starts]: the n-th `<audio_start>` takes clip ``clip_index[n]``, so rows
        that share a clip (the samples of one prompt) have it encoded once.
        """
        embeds = self.model.embed_tokens(input_ids)
        if input_features is None:
            return embeds
        audio, tokens = self.get_audio_features(input_features, feature_lens)
        if clip_index is not None:
            audio, tokens = audio[clip_index], tokens[clip_index]
        patches = self._audio_patch_mask(input_ids, tokens)
        valid = _valid(tokens, audio.shape[1])
        return embeds.masked_scatter(patches[..., None], audio[valid])

    def _audio_patch_mask(self, input_ids: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """[B, L] bool: the tokens[n] positions right after clip n's `<audio_start>`.

        Each must be an `<audio_patch>` and the run must end there. A patch token elsewhere (say,
        one the model generated) stays an ordinary token.
        """
        start_id, patch_id = self.config.audio_start_token_id, self.config.audio_patch_token_id
        starts = (input_ids == start_id).nonzero()  # row-major, the clip order
        if len(starts) != len(tokens):
            raise ValueError(
                f"{len(tokens)} audio clips in input_features but {len(starts)} <audio_start> "
                f"tokens (id {start_id}) in input_ids: each clip needs its own <audio_start>"
            )
        length = input_ids.shape[1]
        ends = starts[:, 1] + 1 + tokens  # first position past each run
        offsets = torch.arange(int(tokens.sum()), device=input_ids.device)
        offsets = offsets - (tokens.cumsum(0) - tokens).repeat_interleave(tokens)
        rows = starts[:, 0].repeat_interleave(tokens)
        cols = (starts[:, 1] + 1).repeat_interleave(tokens) + offsets
        is_patch = input_ids == patch_id
        if bool((ends > length).any()) or not bool(is_patch[rows, cols].all()):
            self._raise_patch_mismatch(is_patch, starts, tokens)
        inside = ends < length
        if bool(is_patch[starts[inside, 0], ends[inside]].any()):
            self._raise_patch_mismatch(is_patch, starts, tokens)
        mask = torch.zeros_like(is_patch)
        mask[rows, cols] = True
        return mask

    @staticmethod
    def _raise_patch_mismatch(is_patch: torch.Tensor, starts: torch.Tensor, tokens: torch.Tensor):
        for clip, ((row, col), want) in enumerate(
            zip(starts.tolist(), tokens.tolist(), strict=True)
        ):
            run = int(is_patch[row, col + 1 :].long().cumprod(0).sum())
            if run != want:
                raise ValueError(
                    f"audio clip {clip} (batch row {row}, <audio_start> at position {col}) is "
                    f"followed by {run} <audio_patch> tokens but the encoder gives {want} for it; "
                    "count them with rollouts.audio.num_audio_tokens(num_mel_frames)"
                )

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        input_features: torch.Tensor | None = None,
        feature_lens: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Causal-LM forward. The audio encoder runs iff `input_features` is given, which must
        then match the `<audio_start>` tokens in `input_ids` (the prefill, never a decode step)."""
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("pass input_ids or inputs_embeds")
            inputs_embeds = self.embed_inputs(input_ids, input_features, feature_lens)
        elif input_features is not None:
            raise ValueError(
                "input_features with inputs_embeds: the audio would be ignored; build inputs_embeds "
                "with embed_inputs(input_ids, input_features, feature_lens) instead"
            )
        outputs = self.model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            **kwargs,
        )
        logits = self.lm_head(slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep))
        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits,
                labels=labels,
                vocab_size=self.config.text_config.vocab_size,
                **kwargs,
            )
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def prepare_inputs_for_generation(
        self,
        *args,
        input_features: torch.Tensor | None = None,
        feature_lens: torch.Tensor | None = None,
        is_first_iteration: bool | None = False,
        **kwargs,
    ) -> dict:
        """Audio goes to the prefill only; with a cache the decode steps never re-encode it."""
        inputs = super().prepare_inputs_for_generation(
            *args, is_first_iteration=is_first_iteration, **kwargs
        )
        if is_first_iteration or not kwargs.get("use_cache", True):
            inputs["input_features"] = input_features
            inputs["feature_lens"] = feature_lens
        return inputs

    def _expand_inputs_for_generation(
        self,
        expand_size: int = 1,
        is_encoder_decoder: bool = False,
        input_ids: torch.LongTensor | None = None,
        **model_kwargs,
    ) -> tuple[torch.LongTensor, dict]:
        """num_return_sequences > 1 repeats each row; repeat its clips as a group to match, since
        clips are indexed row-major, not by batch row (the default would interleave them)."""
        features = model_kwargs.pop("input_features", None)
        feature_lens = model_kwargs.pop("feature_lens", None)
        if features is not None and expand_size > 1:
            per_row = (input_ids == self.config.audio_start_token_id).sum(1).tolist()
            firsts = [sum(per_row[:row]) for row in range(len(per_row))]
            order = torch.cat(
                [
                    torch.arange(first, first + count).repeat(expand_size)
                    for first, count in zip(firsts, per_row, strict=True)
                ]
            ).to(features.device)
            features = features[order]
            feature_lens = (
                None if feature_lens is None else feature_lens[order.to(feature_lens.device)]
            )
        input_ids, model_kwargs = super()._expand_inputs_for_generation(
            expand_size, is_encoder_decoder, input_ids, **model_kwargs
        )
        if features is not None:
            model_kwargs["input_features"] = features
            model_kwargs["feature_lens"] = feature_lens
        return input_ids, model_kwargs
