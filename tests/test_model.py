"""Step-Audio 2 model: released names and shapes, audio placement, KV-cached generation, Auto loading."""

import json
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache

import rollouts
from rollouts.modeling import StepAudio2Config, StepAudio2ForCausalLM, tiny_config
from rollouts.modeling.modeling_step_audio_2 import StepAudio2EncoderAttention

RELEASED_CONFIG = Path(rollouts.__file__).parent / "modeling" / "step_audio_2_mini_config.json"
PAD, EOS, TEXT, AUDIO_START, AUDIO_END, PATCH, VOCAB = 0, 1, 7, 500, 501, 502, 512


def mel_tokens(num_frames: int) -> int:
    """Patch tokens for T mel frames, by the released code's arithmetic (what
    rollouts.audio.num_audio_tokens does)."""
    return ((num_frames - 2 + 1) // 2 // 2 + 2 - 3) // 2 + 1


@pytest.fixture(scope="module")
def model() -> StepAudio2ForCausalLM:
    torch.manual_seed(0)
    return StepAudio2ForCausalLM(tiny_config(VOCAB, AUDIO_START, PATCH, EOS, PAD)).eval()


def batch_inputs(clip_frames: list[int], text_lengths: list[int], seed: int = 0) -> dict:
    """Left-padded prompts `text <audio_start> patches <audio_end> text`, one clip per row, and
    zero-padded mels with feature_lens = T - 2 (the contract of rollouts.audio.batch_mels)."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for frames, length in zip(clip_frames, text_lengths, strict=True):
        text = torch.randint(TEXT, AUDIO_START, (length,), generator=gen).tolist()
        rows.append(
            text[:2] + [AUDIO_START] + [PATCH] * mel_tokens(frames) + [AUDIO_END] + text[2:]
        )
    width = max(map(len, rows))
    input_ids = torch.tensor([[PAD] * (width - len(r)) + r for r in rows])
    features = torch.zeros(len(clip_frames), 128, max(clip_frames))
    for n, frames in enumerate(clip_frames):
        features[n, :, :frames] = torch.randn(128, frames, generator=gen)
    return {
        "input_ids": input_ids,
        "attention_mask": (input_ids != PAD).long(),
        "input_features": features,
        "feature_lens": torch.tensor(clip_frames) - 2,
    }


def test_released_config_loads_with_mini_sizes():
    config = StepAudio2Config.from_json_file(RELEASED_CONFIG)
    text, audio = config.text_config, config.audio_encoder_config
    assert config.model_type == "step_audio_2" and config.architectures == ["StepAudio2ForCausalLM"]
    assert (text.hidden_size, text.intermediate_size, text.num_hidden_layers) == (3584, 18944, 28)
    assert (text.num_attention_heads, text.num_key_value_heads, text.vocab_size) == (28, 4, 158720)
    assert text.rope_parameters["rope_theta"] == 1e6 and text.rms_norm_eps == 1e-6
    assert text.eos_token_id == [151643, 151645, 151665] and not text.tie_word_embeddings
    assert (audio.n_mels, audio.n_audio_ctx, audio.n_audio_state) == (128, 1500, 1280)
    assert (audio.n_audio_head, audio.n_audio_layer, audio.llm_dim) == (20, 32, 3584)
    assert (audio.kernel_size, audio.adapter_stride) == (3, 2)
    assert (config.audio_start_token_id, config.audio_patch_token_id) == (151688, 151690)
    defaults = StepAudio2Config()  # the defaults are the released model
    assert defaults.text_config.to_dict() == text.to_dict()


def test_released_config_builds_the_8_3b_model_with_832_tensors():
    with torch.device("meta"):
        state = StepAudio2ForCausalLM(StepAudio2Config.from_json_file(RELEASED_CONFIG)).state_dict()
    assert len(state) == 832  # the released checkpoint: 8.3 B parameters in 832 tensors
    assert round(sum(t.numel() for t in state.values()) / 1e9, 1) == 8.3


def test_config_names_a_misspelt_encoder_key():
    with pytest.raises(ValueError, match="did you mean 'n_audio_state'"):
        StepAudio2Config(audio_encoder_config={"n_audio_stat": 64})


def test_state_dict_is_exactly_the_released_key_set():
    raw = json.loads(RELEASED_CONFIG.read_text())
    layers, blocks, vocab, hidden, inter, kv_heads, heads = 2, 2, 640, 64, 96, 2, 4
    raw["text_config"].update(
        num_hidden_layers=layers,
        hidden_size=hidden,
        intermediate_size=inter,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        vocab_size=vocab,
        pad_token_id=0,
        eos_token_id=1,
    )
    width = 32
    raw["audio_encoder_config"].update(
        n_audio_state=width, n_audio_head=4, n_audio_layer=blocks, llm_dim=hidden
    )
    raw |= {"audio_start_token_id": vocab - 3, "audio_patch_token_id": vocab - 1}
    config = StepAudio2Config.from_dict(raw)
    state = StepAudio2ForCausalLM(config).state_dict()
    kv = kv_heads * hidden // heads
    s = width
    expected = {
        "model.embed_tokens.weight": (vocab, hidden),
        "model.norm.weight": (hidden,),
        "lm_head.weight": (vocab, hidden),
        "encoder.conv1.weight": (s, 128, 3),
        "encoder.conv1.bias": (s,),
        "encoder.conv2.weight": (s, s, 3),
        "encoder.conv2.bias": (s,),
        "encoder.positional_embedding.weight": (1500, s),
        "encoder.after_norm.weight": (s,),
        "encoder.after_norm.bias": (s,),
        "adapter.conv.weight": (s, s, 3),
        "adapter.conv.bias": (s,),
        "adapter.linear1.weight": (2048, s),
        "adapter.linear1.bias": (2048,),
        "adapter.linear2.weight": (hidden, 2048),
        "adapter.linear2.bias": (hidden,),
    }
    for i in range(layers):
        p = f"model.layers.{i}."
        expected |= {
            p + "self_attn.q_proj.weight": (hidden, hidden),
            p + "self_attn.q_proj.bias": (hidden,),
            p + "self_attn.k_proj.weight": (kv, hidden),
            p + "self_attn.k_proj.bias": (kv,),
            p + "self_attn.v_proj.weight": (kv, hidden),
            p + "self_attn.v_proj.bias": (kv,),
            p + "self_attn.o_proj.weight": (hidden, hidden),
            p + "mlp.gate_proj.weight": (inter, hidden),
            p + "mlp.up_proj.weight": (inter, hidden),
            p + "mlp.down_proj.weight": (hidden, inter),
            p + "input_layernorm.weight": (hidden,),
            p + "post_attention_layernorm.weight": (hidden,),
        }
    for j in range(blocks):
        p = f"encoder.blocks.{j}."
        expected |= {
            p + "attn.query.weight": (s, s),
            p + "attn.query.bias": (s,),
            p + "attn.key.weight": (s, s),
            p + "attn.value.weight": (s, s),
            p + "attn.value.bias": (s,),
            p + "attn.out.weight": (s, s),
            p + "attn.out.bias": (s,),
            p + "attn_ln.weight": (s,),
            p + "attn_ln.bias": (s,),
            p + "mlp.0.weight": (4 * s, s),
            p + "mlp.0.bias": (4 * s,),
            p + "mlp.2.weight": (s, 4 * s),
            p + "mlp.2.bias": (s,),
            p + "mlp_ln.weight": (s,),
            p + "mlp_ln.bias": (s,),
        }
    assert set(state) == set(expected)
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    assert state["lm_head.weight"].data_ptr() != state["model.embed_tokens.weight"].data_ptr()


def test_token_count_matches_the_released_formula(model):
    frames = torch.arange(3, 3001)
    tokens = model.num_audio_tokens(frames - 2)
    assert tokens.tolist() == [mel_tokens(int(t)) for t in frames]
    # 1 s, 10 s and 25 s clips (100 mel frames per second): 13, 125 and 313 patch tokens
    assert model.num_audio_tokens(torch.tensor([100, 1000, 2500])).tolist() == [13, 125, 313]
    audio = pytest.importorskip("rollouts.audio")
    assert all(audio.num_audio_tokens(int(t)) == mel_tokens(int(t)) for t in frames[::7])


@torch.no_grad()
def test_a_clip_encodes_the_same_alone_or_padded_in_a_batch(model):
    inputs = batch_inputs([97, 230], [3, 3])
    together, tokens = model.get_audio_features(inputs["input_features"], inputs["feature_lens"])
    alone, alone_tokens = model.get_audio_features(inputs["input_features"][:1, :, :97])
    assert tokens.tolist() == [mel_tokens(97), mel_tokens(230)] and alone_tokens[0] == tokens[0]
    n = int(tokens[0])
    torch.testing.assert_close(together[0, :n], alone[0, :n], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@torch.no_grad()
def test_encoder_attention_is_the_released_whisper_attention(dtype):
    """q and k each scaled by head_dim^-0.25, padded keys masked, softmax in fp32."""
    torch.manual_seed(0)
    attention = StepAudio2EncoderAttention(width=64, num_heads=4).to(dtype)
    x = torch.randn(2, 9, 64, dtype=dtype)
    key_valid = torch.arange(9)[None, :] < torch.tensor([[9], [5]])

    def heads(t):
        return t.view(2, 9, 4, 16).transpose(1, 2)

    scale = 16**-0.25
    q, k = heads(attention.query(x)) * scale, heads(attention.key(x)) * scale
    scores = (q @ k.transpose(-1, -2)).float().masked_fill(~key_valid[:, None, None, :], -1e30)
    weights = scores.softmax(-1).to(dtype)
    expected = attention.out(
        (weights @ heads(attention.value(x))).transpose(1, 2).reshape(2, 9, 64)
    )
    tolerance = {"rtol": 2e-2, "atol": 2e-2} if dtype == torch.bfloat16 else {}
    torch.testing.assert_close(attention(x, key_valid), expected, **tolerance)


@torch.no_grad()
def test_answers_depend_on_the_audio(model):
    inputs = batch_inputs([150, 150], [4, 4])
    inputs["input_ids"][1] = inputs["input_ids"][0]  # same text, different clips
    logits = model(**inputs).logits[:, -1]
    assert (logits[0] - logits[1]).abs().max() > 1e-3
    assert torch.isfinite(logits).all()
    inputs["input_features"][1] = inputs["input_features"][0]
    same = model(**inputs).logits[:, -1]
    torch.testing.assert_close(same[0], same[1])


@torch.no_grad()
def test_patch_runs_are_checked_and_stray_patches_are_plain_tokens(model):
    inputs = batch_inputs([150, 200], [3, 3])
    short = inputs["input_ids"].clone()
    row = short[1].tolist()
    at = row.index(PATCH)
    short[1] = torch.tensor([PAD, *row[:at], *row[at + 1 :]])  # one patch fewer
    expected = rf"audio clip 1 \(batch row 1.*followed by {mel_tokens(200) - 1} <audio_patch>"
    with pytest.raises(ValueError, match=expected):
        model.embed_inputs(short, inputs["input_features"], inputs["feature_lens"])
    long = inputs["input_ids"].clone()
    long[0, long[0].tolist().index(AUDIO_END)] = PATCH  # one patch too many
    with pytest.raises(ValueError, match=r"audio clip 0 \(batch row 0"):
        model.embed_inputs(long, inputs["input_features"], inputs["feature_lens"])
    stray = torch.cat([inputs["input_ids"], torch.full((2, 1), PATCH)], 1)  # e.g. generated
    embeds = model.embed_inputs(stray, inputs["input_features"], inputs["feature_lens"])
    torch.testing.assert_close(embeds[:, -1], model.model.embed_tokens.weight[[PATCH, PATCH]])
    with pytest.raises(ValueError, match="1 audio clips in input_features but 2 <audio_start>"):
        model.embed_inputs(
            inputs["input_ids"], inputs["input_features"][:1], inputs["feature_lens"][:1]
        )
    with pytest.raises(ValueError, match="feature_lens"):
        model.embed_inputs(
            inputs["input_ids"], inputs["input_features"], inputs["feature_lens"] + 5
        )


@torch.no_grad()
def test_audio_longer_than_the_encoder_context_is_refused(model):
    with pytest.raises(ValueError, match="n_audio_ctx=1500"):
        model.get_audio_features(torch.zeros(1, 128, 3002))


@torch.no_grad()
def test_greedy_generate_with_cache_equals_without_and_encodes_once(model):
    inputs = batch_inputs([130, 260], [5, 2], seed=1)
    calls = []
    hook = model.encoder.register_forward_hook(lambda *_: calls.append(1))
    try:
        settings = {"max_new_tokens": 8, "min_new_tokens": 8, "do_sample": False}
        cached = model.generate(**inputs, **settings, use_cache=True)
        encoder_calls_cached = len(calls)
        uncached = model.generate(**inputs, **settings, use_cache=False)
    finally:
        hook.remove()
    assert encoder_calls_cached == 1
    assert len(calls) - encoder_calls_cached == 8  # without a cache every step re-encodes
    assert cached.shape == (2, inputs["input_ids"].shape[1] + 8)
    assert torch.equal(cached, uncached)


@torch.no_grad()
def test_manual_prefill_then_cached_decode_matches_full_forward(model):
    """The engine's path: embed once, prefill with inputs_embeds, then decode ids on the cache."""
    inputs = batch_inputs([120, 180], [4, 2], seed=2)
    mask = inputs["attention_mask"]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    embeds = model.embed_inputs(
        inputs["input_ids"], inputs["input_features"], inputs["feature_lens"]
    )
    cache = DynamicCache(config=model.config)
    out = model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, cache=cache)
    step = out.logits[:, -1].argmax(-1, keepdim=True)
    mask = torch.cat([mask, mask.new_ones(2, 1)], 1)
    decoded = model(
        input_ids=step, attention_mask=mask, position_ids=positions[:, -1:] + 1, cache=out.cache
    ).logits[:, -1]
    full = model(
        input_ids=torch.cat([inputs["input_ids"], step], 1),
        attention_mask=mask,
        position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
        input_features=inputs["input_features"],
        feature_lens=inputs["feature_lens"],
        use_cache=False,
    ).logits[:, -1]
    torch.testing.assert_close(decoded, full, rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_num_return_sequences_repeats_each_rows_clips(model):
    inputs = batch_inputs([110, 240], [3, 3])
    _, expanded = model._expand_inputs_for_generation(
        expand_size=3,
        input_ids=inputs["input_ids"],
        input_features=inputs["input_features"],
        feature_lens=inputs["feature_lens"],
    )
    assert expanded["feature_lens"].tolist() == [108] * 3 + [238] * 3
    torch.manual_seed(0)
    out = model.generate(**inputs, do_sample=True, num_return_sequences=3, max_new_tokens=2)
    assert out.shape[0] == 6


def test_loss_from_labels_is_finite_and_backpropagates(model):
    inputs = batch_inputs([100, 140], [3, 3])
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    loss = model(**inputs, labels=labels, use_cache=False).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert model.adapter.linear2.weight.grad is not None and model.lm_head.weight.grad is not None
    model.zero_grad(set_to_none=True)


@torch.no_grad()
def test_save_and_auto_load_round_trip(model, tmp_path):
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "step_audio_2" and "auto_map" not in saved
    assert isinstance(AutoConfig.from_pretrained(tmp_path), StepAudio2Config)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is StepAudio2ForCausalLM
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    inputs = batch_inputs([100, 150], [3, 3])
    torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits)
    assert re.fullmatch(r"\d+", str(sum(p.numel() for p in loaded.parameters())))
