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
