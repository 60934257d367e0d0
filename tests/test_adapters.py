"""Every model family behind the adapter contract: Step-Audio 2, Qwen2-Audio, Qwen2.5-Omni's
thinker and a plain causal LM, each as a tiny random checkpoint built offline."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from rewards import completion_fields, reward
from rlhf.config import LoraConfig, ModelConfig, RLConfig, load_config
from rlhf.sft import sequence_batch
from rlhf.trainer import RLTrainer
from rlhf.training import prepare_model
from rollouts.adapters import (
    AudioMismatchError,
    CausalLMAdapter,
    Qwen2AudioAdapter,
    Qwen25OmniThinkerAdapter,
    StepAudio2Adapter,
    adapter_for,
)
from rollouts.audio import AudioError
from rollouts.chat import IGNORE_INDEX, AssistantTarget
from rollouts.engine import LocalEngine
from rollouts.policy import Policy
from rollouts.tiny import ARCHS, QWEN2_AUDIO_WINDOW_S, make_tiny
from rollouts.types import PromptSample, SamplingParams

ADAPTER = {
    "step-audio-2": StepAudio2Adapter,
    "qwen2-audio": Qwen2AudioAdapter,
    "qwen2.5-omni": Qwen25OmniThinkerAdapter,
    "text": CausalLMAdapter,
}
AUDIO_ARCHS = [a for a in ARCHS if a != "text"]


@reward("adapter_test_think_chars")
def think_chars(prompts, completions, **kwargs):
    """Varies across random completions, so a random policy gets non-zero advantages."""
    return [len(c.think or "") / 10 for c in completion_fields(completions, kwargs)]


@pytest.fixture(scope="module", params=ARCHS)
def arch_dir(request, tmp_path_factory):
    from rlhf.data.grammar import corpus

    arch = request.param
    out = make_tiny(tmp_path_factory.mktemp(arch), corpus().splitlines(), 16, arch=arch)
    return arch, out


def prompts(arch: str, n: int = 2, seconds=(1.0, 1.6)) -> list[PromptSample]:
    rng = np.random.default_rng(0)
    samples = []
    for i in range(n):
        question = {"type": "text", "text": "Is the speaker male or female?"}
        content = [question] if arch == "text" else [{"type": "audio"}, question]
        clip = 0.1 * rng.standard_normal(int(16000 * seconds[i % len(seconds)]))
        samples.append(
            PromptSample(
                id=f"p{i}",
                messages=[{"role": "user", "content": content}],
                audio=[] if arch == "text" else [clip.astype(np.float32)],
            )
        )
    return samples


def model_forward_logprobs(policy: Policy, batch) -> torch.Tensor:
    """Log-probs of the completions from the model's own ``forward`` (full logits)."""
    kwargs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    if batch.input_features is not None:
        features, lens = batch.input_features, batch.feature_lens
        if isinstance(policy.adapter, StepAudio2Adapter):
            kwargs |= {"input_features": features, "feature_lens": lens}
        else:
            frames = torch.arange(features.shape[-1])
            kwargs |= {"input_features": features, "feature_attention_mask": frames < lens[:, None]}
    logits = policy.base(**kwargs).logits.float().log_softmax(-1)
    out = torch.zeros(batch.completion_ids.shape)
    for b in range(len(out)):
        for t in range(int(batch.completion_mask[b].sum())):
            position = int(batch.prompt_lengths[b]) + t - 1
            out[b, t] = logits[b, position, batch.completion_ids[b, t]]
    return out


def test_adapter_is_chosen_from_the_checkpoint_config(arch_dir):
    arch, path = arch_dir
    policy = Policy.from_pretrained(path)
    assert type(policy.adapter) is ADAPTER[arch]
    assert adapter_for(policy.base.config) is ADAPTER[arch]
    assert adapter_for(policy.base.config.to_dict()).name == arch
    vllm = policy.adapter.vllm_names(policy.base.config)
    assert vllm.architecture == type(policy.base).__name__
    assert (vllm.audio_placeholder is None) == (arch == "text")


def test_chunked_logprobs_equal_the_model_forward(arch_dir):
    arch, path = arch_dir
    policy = Policy.from_pretrained(path)
    samples = prompts(arch)
    inputs = policy.adapter.prompt_inputs(samples)
    rows = [ids[m.bool()].tolist() for ids, m in zip(inputs["input_ids"], inputs["attention_mask"])]
    completions = [[5, 17, 9, 33, 12], [40, 41]]
    batch = policy.sequence_batch(
        rows, completions, inputs["input_features"], inputs["feature_lens"]
    )
    ours, _ = policy.logprobs(batch, chunk_size=3)
    theirs = model_forward_logprobs(policy, batch)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    if arch != "text":  # the audio reaches the policy
        silent = policy.sequence_batch(
            rows, completions, torch.zeros_like(inputs["input_features"]), inputs["feature_lens"]
        )
        assert not torch.allclose(policy.logprobs(silent)[0], ours)


def test_cached_sampling_is_reproducible_and_scored_like_the_trainer(arch_dir):
    arch, path = arch_dir
    policy = Policy.from_pretrained(path)
    engine = LocalEngine(policy, batch_size=4)
    sampling = SamplingParams(temperature=1.0, top_p=1.0, repetition_penalty=1.0, max_new_tokens=8)
    first = engine.generate(prompts(arch), 2, sampling)
    again = engine.generate(prompts(arch), 2, sampling)
    assert [r.completion_ids for r in first] == [r.completion_ids for r in again]
    assert len({tuple(r.completion_ids) for r in first}) > 1
    banned = set(policy.adapter.banned_ids)
    assert not banned & {t for r in first for t in r.completion_ids}
    # the engine's behaviour log-probs (left padded, KV cache) are the trainer's (right padded)
    by_id = {s.id: s for s in prompts(arch)}
    batch = policy.rollout_batch(by_id, first)
    trainer_logprobs, _ = policy.logprobs(batch)
    for b, r in enumerate(first):
        torch.testing.assert_close(
            trainer_logprobs[b, : len(r.logprobs)], torch.tensor(r.logprobs), atol=1e-4, rtol=1e-4
        )


def test_loss_mask_covers_exactly_the_completion(arch_dir):
    arch, path = arch_dir
    policy = Policy.from_pretrained(path)
    adapter = policy.adapter
    samples = prompts(arch)
    target = AssistantTarget(think="it sounds low", text="male")
    batch = policy.sft_batch(samples, [target, target], "text")
    prompt_rows = adapter.prompt_inputs(samples)["attention_mask"].sum(-1)
    for b in range(len(samples)):
        labelled = (batch["labels"][b] != IGNORE_INDEX).nonzero().flatten().tolist()
        length = int(batch["attention_mask"][b].sum())
        assert labelled == list(range(int(prompt_rows[b]), length))  # all of the answer, no more
        assert int(batch["input_ids"][b, length - 1]) in adapter.stop_ids
    # padding is never trained; for ChatML models, nothing after the end of the turn either
    # (Step-Audio 2's completions may go on after a tool call, see rollouts.chat)
    stop = next(iter(adapter.stop_ids))
    words = adapter.tokenizer.encode("male", add_special_tokens=False)[:1] * 2
    mask = adapter.loss_mask([*words, stop, *words[:1], adapter.pad_id], "text")
    assert mask[:3] == [1, 1, 1] and mask[4] == 0
    assert mask[3] == int(arch == "step-audio-2")
    parsed = adapter.parse(
        [*adapter.tokenizer.encode("so low</think>\n\nmale", add_special_tokens=False), stop, 5],
        samples[0],
    )
    assert (parsed.think, parsed.answer, parsed.think_closed) == ("so low", "male", True)


def test_sft_step_lowers_the_loss(arch_dir):
    arch, path = arch_dir
    policy = Policy.from_pretrained(path)
    samples = prompts(arch)
    target = AssistantTarget(think="it sounds low", text="male")
    batch = sequence_batch(policy.sft_batch(samples, [target, target]))
    optimizer = torch.optim.AdamW(policy.model.parameters(), lr=1e-2)
    losses = []
    for _ in range(3):
        logprobs, _ = policy.logprobs(batch)
        loss = -(logprobs * batch.completion_mask).sum() / batch.completion_mask.sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_lora_targets_exist_and_spare_the_audio_encoder(arch_dir):
    arch, path = arch_dir
    config = ModelConfig(path=str(path), lora=LoraConfig(enabled=True))
    policy = Policy.from_pretrained(path)
    model = prepare_model(policy.model, config)
    adapted = [name for name, _ in model.named_modules() if name.endswith("lora_A")]
    layers = policy.base.config.get_text_config().num_hidden_layers
    assert len(adapted) == 7 * layers  # q k v o gate up down in every decoder layer
    encoder = ADAPTER[arch].audio_encoder
    assert encoder is None or not any(encoder.split(".")[-1] in name for name in adapted)


def _text_dataset(tmp_path) -> str:
    rows = [
        {"messages": [{"role": "user", "content": f"Question {i}: is it {w}?"}], "task": "t"}
        for i, w in enumerate(["red", "blue", "green", "big"])
    ]
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return str(path)


def test_a_recipe_switches_model_by_path_alone_and_takes_a_grpo_step(
    arch_dir, tiny_dataset_dir, tmp_path
):
    arch, path = arch_dir
    data = _text_dataset(tmp_path) if arch == "text" else tiny_dataset_dir
    config = load_config(
        RLConfig,
        None,
        [
            f"model.path={path}",  # the only model-specific line
            f"data.path={data}",
            f"run.output_dir={tmp_path / 'run'}",
            "run.steps=1",
            "run.save_every=0",
            "rollout.prompts_per_step=2",
            "rollout.num_generations=3",
            "rollout.sampling.max_new_tokens=8",
            "rollout.sampling.temperature=1.0",
            "rollout.sampling.top_p=1.0",
            "rollout.sampling.repetition_penalty=1.0",
            "algorithm.beta=0.04",
            "optim.lr=1e-3",
            "optim.micro_batch_size=3",
            "rewards=[{name: adapter_test_think_chars}]",
        ]
        + ([] if arch == "text" else ["data.tasks=[gender]"]),
    )
    trainer = RLTrainer(config)
    assert type(trainer.policy.adapter) is ADAPTER[arch]
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    metrics = trainer.step()
    assert math.isfinite(metrics["loss"]) and math.isfinite(metrics["kl"])
    changed = [k for k, v in trainer.model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed
    encoder = ADAPTER[arch].audio_encoder
    assert encoder is None or not any(k.startswith(encoder + ".") for k in changed)  # frozen


@pytest.mark.parametrize("lora", [False, True], ids=["full critic", "lora critic"])
def test_ppo_with_its_critic_runs_on_every_family(arch_dir, tiny_dataset_dir, tmp_path, lora):
    """The PPO recipes too switch model by ``model.path`` alone: the critic is built from the
    family's own model (full) or is a second adapter on the policy's base (LoRA)."""
    arch, path = arch_dir
    data = _text_dataset(tmp_path) if arch == "text" else tiny_dataset_dir
    config = load_config(
        RLConfig,
        None,
        [
            f"model.path={path}",
            f"model.lora.enabled={lora}",
            f"data.path={data}",
            f"run.output_dir={tmp_path / 'run'}",
            "run.steps=1",
            "run.save_every=0",
            "algorithm.name=ppo",
            "algorithm.ppo.critic_lr=1e-2",
            "rollout.prompts_per_step=2",
            "rollout.num_generations=2",
            "rollout.sampling.max_new_tokens=8",
            "rollout.sampling.temperature=1.0",
            "optim.lr=1e-3",
            "optim.micro_batch_size=4",
            "rewards=[{name: adapter_test_think_chars}]",
        ]
        + ([] if arch == "text" else ["data.tasks=[gender]"]),
    )
    trainer = RLTrainer(config)
    head = trainer.critic.head
    before = head.weight.detach().clone()
    metrics = trainer.step()
    assert math.isfinite(metrics["value_loss"]) and math.isfinite(metrics["loss"])
    assert not torch.equal(head.weight.detach(), before)  # the critic learnt
    encoder = ADAPTER[arch].audio_encoder
    if encoder is not None and lora:  # the critic's adapter spares the encoder, as the policy's
        inside = [n for n, _ in trainer.model.named_parameters() if "critic" in n and encoder in n]
        assert not inside
    if encoder is not None and not lora:
        critic_model = trainer.critic.body.model
        frozen = critic_model.get_submodule(encoder)
        assert not any(p.requires_grad for p in frozen.parameters())


@pytest.mark.parametrize("arch", AUDIO_ARCHS)
def test_a_rollout_whose_prompt_lost_its_clip_is_named(arch, tmp_path_factory):
    from rlhf.data.grammar import corpus

    path = make_tiny(tmp_path_factory.mktemp(arch), corpus().splitlines()[:200], 16, arch=arch)
    policy = Policy.from_pretrained(path)
    samples = prompts(arch)
    rollouts = LocalEngine(policy).generate(samples, 2, SamplingParams(max_new_tokens=3))
    by_id = {s.id: s for s in samples}
    policy.rollout_batch(by_id, rollouts)  # consistent: fine

    # the engine saw the prompt without its clip (the audio part dropped on the way)
    deaf = PromptSample(id="p1", messages=[{"role": "user", "content": "Male or female?"}])
    deaf_ids = policy.adapter.prompt_inputs([deaf])["input_ids"][0].tolist()
    rollouts[3].prompt_ids = deaf_ids
    with pytest.raises(AudioMismatchError, match=r"rollout 3 \(prompt 'p1', sample 1\)"):
        policy.rollout_batch(by_id, rollouts)

    # a training batch whose prompts hold audio blocks but whose features were not passed
    batch = policy.rollout_batch(by_id, rollouts[:2])
    batch.input_features, batch.clip_index = batch.input_features[:0], batch.clip_index[:1]
    with pytest.raises(AudioMismatchError, match="batch row 1"):
        policy.logprobs(batch)


def test_chat_template_models_refuse_what_they_cannot_render(arch_dir):
    arch, path = arch_dir
    if arch == "step-audio-2":
        pytest.skip("Step-Audio 2 renders tools and speaks")
    adapter = Policy.from_pretrained(path).adapter
    sample = prompts(arch)[0]
    sample.tools = [{"type": "function", "function": {"name": "lookup"}}]
    with pytest.raises(ValueError, match=r"sample 'p0': .*tools"):
        adapter.prompt_inputs([sample])
    sample.tools = None
    with pytest.raises(ValueError, match=r"sample 'p0': .*writes text only"):
        adapter.sft_batch([sample], [AssistantTarget(think=None, text="hi", audio_codes=[1, 2])])
    if arch == "qwen2-audio":  # its processor would cut a clip past the encoder's window
        (long,) = prompts(arch, 1, seconds=(QWEN2_AUDIO_WINDOW_S + 0.5,))
        with pytest.raises(AudioError, match=r"sample .p0.: audio\[0\] lasts .* at most 6 s"):
            adapter.prompt_inputs([long])


def test_the_vllm_engine_refuses_other_families_before_starting(arch_dir):
    from rewards.errors import UserError
    from rollouts.vllm_engine import VLLMEngine

    arch, path = arch_dir
    if arch == "step-audio-2":
        pytest.skip("the family the vLLM engine serves (tests/test_vllm.py)")
    policy = Policy.from_pretrained(path)
    with pytest.raises(UserError, match="serves Step-Audio 2 checkpoints only"):
        VLLMEngine(path, policy.adapter)
