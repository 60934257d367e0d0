"""`rlhf make-tiny`: the command writes a checkpoint that the Auto classes load offline."""

from transformers import AutoModelForCausalLM, AutoTokenizer

import rollouts  # noqa: F401  (registers the architecture)
from rlhf.cli import main
from rollouts.processor import StepAudio2Processor
from rollouts.tokens import SpecialIds


def test_make_tiny_round_trip(tmp_path, capsys):
    out = tmp_path / "tiny"
    assert main(["make-tiny", str(out), "--audio-codes", "16", "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    assert "M parameters" in printed

    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    processor = StepAudio2Processor.from_pretrained(out)
    assert type(model).__name__ == "StepAudio2ForCausalLM"
    assert model.config.text_config.vocab_size == len(tokenizer)
    ids = SpecialIds.from_tokenizer(processor.tokenizer)
    assert ids.num_audio_codes == 16
    assert model.config.audio_patch_token_id == ids.audio_patch
    # the grammar's words are in the tokenizer's corpus: a spoken sentence stays a few tokens
    assert len(tokenizer.encode("The farmer painted a wooden boat.")) <= 10
    total = sum(p.numel() for p in model.parameters())
    assert f"{total / 1e6:.2f} M parameters" in printed


def test_make_tiny_archs_load_and_generate_with_their_transformers_classes(tmp_path, capsys):
    import numpy as np
    import torch
    from transformers import (
        AutoProcessor,
        Qwen2_5OmniThinkerForConditionalGeneration,
        Qwen2AudioForConditionalGeneration,
        Qwen2ForCausalLM,
    )

    from rlhf.tiny import ARCHS
    from rollouts import tiny

    assert ARCHS == tiny.ARCHS  # the command lists them without importing rollouts

    out = tmp_path / "qwen2-audio"
    assert main(["make-tiny", str(out), "--arch", "qwen2-audio"]) == 0
    assert "Qwen2AudioForConditionalGeneration" in capsys.readouterr().out
    model = Qwen2AudioForConditionalGeneration.from_pretrained(out)
    processor = AutoProcessor.from_pretrained(out)
    chat = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "Who?"}]}]
    text = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    clip = np.zeros(16000, dtype=np.float32)
    inputs = processor(text=[text], audio=[clip], sampling_rate=16000, return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 3

    for arch, cls in (
        ("qwen2.5-omni", Qwen2_5OmniThinkerForConditionalGeneration),
        ("text", Qwen2ForCausalLM),
    ):
        assert main(["make-tiny", str(tmp_path / arch), "--arch", arch]) == 0
        model = cls.from_pretrained(tmp_path / arch)
        ids = torch.tensor([[1, 2, 3]])
        assert model.generate(input_ids=ids, max_new_tokens=2, do_sample=False).shape[1] == 5
