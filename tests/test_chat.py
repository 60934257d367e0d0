"""Tests for the Step-Audio 2 chat format: tokens, rendering, TA4, parsing and loss masks."""

from __future__ import annotations

import json
import random
import re

import pytest

from rollouts.chat import (
    IGNORE_INDEX,
    AssistantTarget,
    build_ta4,
    completion_loss_mask,
    parse_completion,
    parse_completion_text,
    parse_ta4,
    render_completion,
    render_prompt,
    render_sft,
)
from rollouts.tokenizer import train_tokenizer
from rollouts.tokens import SPECIAL_TOKENS, SpecialIds, audio_token, audio_tokens

CORPUS = [
    "You are a helpful assistant. Listen to the audio and answer the question.",
    "What is the speaker's gender? The speaker is male. The speaker is female.",
    "Is the pitch low or high? The pitch is high. Is the speech slow, normal or fast?",
    "Let me check the weather in Paris. It is sunny and 21 degrees today.",
    "Hello world, how are you today? I am fine, thank you. Transcribe the clip.",
] * 20
CODES = 64


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(CORPUS, num_audio_codes=CODES, vocab_size=400)


@pytest.fixture(scope="module")
def ids(tok):
    return SpecialIds.from_tokenizer(tok)


def enc(tok, *pieces: str) -> list[int]:
    """Each piece tokenized on its own, as the format prescribes."""
    return [t for p in pieces for t in tok.encode(p, add_special_tokens=False)]


def dec(tok, token_ids) -> str:
    return tok.decode(token_ids, skip_special_tokens=False)


def audio_block(n: int) -> str:
    return "<audio_start>" + "<audio_patch>" * n + "<audio_end>"


# ---------------------------------------------------------------- tokens and tokenizer


def test_special_ids_and_audio_codes(tok, ids):
    assert len(audio_tokens(CODES)) == CODES + 1
    for token in [*SPECIAL_TOKENS, *audio_tokens(CODES)]:
        assert len(tok.encode(token, add_special_tokens=False)) == 1, token
    assert ids.num_audio_codes == CODES
    assert ids.audio_pad == ids.audio_code0 + CODES
    assert tok.convert_ids_to_tokens(ids.audio_pad) == audio_token(CODES)
    assert tok.convert_ids_to_tokens(ids.audio_code0 + 7) == "<audio_7>"
    assert ids.is_audio(ids.audio_pad) and not ids.is_audio(ids.tts_pad)
    assert tok.eos_token == "<|EOT|>" and tok.pad_token_id == ids.pad != ids.eot
    assert tok.bos_token is None
    assert dec(tok, ids.assistant_header) == "<|BOT|>assistant\n"


def test_specials_split_and_decode_verbatim(tok):
    text = "hello<think>world</think>\n\n<tts_start>a<audio_3><tts_pad> b<tts_end><|EOT|>"
    token_ids = tok.encode(text, add_special_tokens=False)
    assert dec(tok, token_ids) == text  # no spaces inserted around specials
    # never merged across a special token: same ids as the pieces between them
    assert token_ids == enc(
        tok, "hello", "<think>", "world", "</think>", "\n\n", "<tts_start>", "a", "<audio_3>"
    ) + enc(tok, "<tts_pad>", " b", "<tts_end>", "<|EOT|>")
    assert tok.decode(token_ids, skip_special_tokens=True) == "helloworld\n\na b"


def test_special_ids_missing_token_is_named():
    plain = train_tokenizer(["abc"], num_audio_codes=2)
    plain_ids = SpecialIds.from_tokenizer(plain)
    assert plain_ids.num_audio_codes == 2
    with pytest.raises(KeyError, match="tokenizer has no"):
        SpecialIds.from_tokenizer(_FakeTok())


class _FakeTok:
    unk_token_id = None
    pad_token_id = None

    def convert_tokens_to_ids(self, token):
        return None


# ---------------------------------------------------------------- rendering


def test_render_system_audio_think(tok):
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {
            "role": "user",
            "content": [
                {"type": "audio"},
                {"type": "text", "text": "What is the speaker's gender?"},
            ],
        },
    ]
    got = render_prompt(messages, tok, [3], think=True)
    assert dec(tok, got) == (
        "<|BOT|>system\nYou are a helpful assistant.<|EOT|>"
        "<|BOT|>human\n<audio_start><audio_patch><audio_patch><audio_patch><audio_end>"
        "What is the speaker's gender?<|EOT|>"
        "<|BOT|>assistant\n<think>\n"
    )
    assert got == enc(
        tok,
        "<|BOT|>system\nYou are a helpful assistant.<|EOT|>",
        "<|BOT|>human\n",
        audio_block(3),
        "What is the speaker's gender?",
        "<|EOT|>",
        "<|BOT|>assistant\n<think>\n",
    )
    no_think = render_prompt(messages, tok, [3], think=False)
    assert dec(tok, no_think).endswith("<|EOT|><|BOT|>assistant\n")


def test_render_tools_tool_call_and_function_output(tok):
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
            },
        }
    ]
    messages = [
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "<think>\nneed the weather\n</think>\n\nLet me check.",  # think dropped
            "tool_calls": [
                {
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"location": "Paris"}},
                }
            ],
        },
        {"role": "tool", "content": '{"temp": 21}'},
    ]
    got = render_prompt(messages, tok, [], think=False, tools=tools)
    assert dec(tok, got) == (
        "<|BOT|>system\nUse tools.<|EOT|>"
        "<|BOT|>tool_json_schemas\n"
        '[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", '
        '"properties": {"location": {"type": "string"}}}}}]<|EOT|>'
        "<|BOT|>human\nWeather in Paris?<|EOT|>"
        "<|BOT|>assistant\nLet me check."
        '<tool_call>function\nget_weather\n{"location": "Paris"}</tool_call><|EOT|>'
        '<|BOT|>function_output\n{"temp": 21}<|EOT|>'
        "<|BOT|>assistant\n"
    )
    # without a system turn the schemas come first
    alone = render_prompt(messages[1:2], tok, [], think=False, tools=tools)
    assert dec(tok, alone).startswith("<|BOT|>tool_json_schemas\n[")


def test_render_spoken_prefill_and_spoken_history(tok):
    messages = [
        {"role": "system", "content": "Answer by voice."},
        {"role": "user", "content": [{"type": "audio"}]},
        {"role": "assistant", "content": "a", "audio_codes": [5, 6, 7, 8, 9]},
        {"role": "user", "content": [{"type": "text", "text": "again"}]},
    ]
    got = render_prompt(messages, tok, [2], think=False, spoken=True)
    assert dec(tok, got) == (
        "<|BOT|>system\nAnswer by voice.<|EOT|>"
        "<|BOT|>human\n<audio_start><audio_patch><audio_patch><audio_end><|EOT|>"
        "<|BOT|>assistant\n<tts_start>"
        "a<audio_5><audio_6><audio_7><audio_8>"
        "<tts_pad><audio_9><audio_64><audio_64><audio_64><tts_end><|EOT|>"
        "<|BOT|>human\nagain<|EOT|>"
        "<|BOT|>assistant\n<tts_start>"
    )
    # think mode does not prefill <tts_start>: the model writes it after </think>
    assert dec(tok, render_prompt(messages, tok, [2], think=True, spoken=True)).endswith(
        "<|BOT|>assistant\n<think>\n"
    )


def test_long_clip_is_several_blocks(tok):
    messages = [{"role": "user", "content": [{"type": "audio"}, {"type": "audio"}]}]
    got = dec(tok, render_prompt(messages, tok, [[313, 2], 1], think=False))
    assert got == (
        "<|BOT|>human\n" + audio_block(313) + audio_block(2) + audio_block(1) + "<|EOT|>"
        "<|BOT|>assistant\n"
    )


def test_render_errors_name_the_problem(tok):
    audio = [{"role": "user", "content": [{"type": "audio"}]}]
    with pytest.raises(ValueError, match="message 0: more audio parts"):
        render_prompt(audio, tok, [])
    with pytest.raises(ValueError, match="more entries"):
        render_prompt(audio, tok, [3, 4])
    with pytest.raises(ValueError, match="message 1: unknown role 'robot'"):
        render_prompt([audio[0], {"role": "robot", "content": "x"}], tok, [3])
    with pytest.raises(ValueError, match=r"content\[0\] has unknown type 'image'"):
        render_prompt([{"role": "user", "content": [{"type": "image"}]}], tok, [])


# ---------------------------------------------------------------- TA4


def test_ta4_layout(ids):
    out = build_ta4([101, 102], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], ids)
    a = ids.audio_code0
    pad = ids.audio_pad
    assert out == [
        101, a + 1, a + 2, a + 3, a + 4,
        102, a + 5, a + 6, a + 7, a + 8,
        ids.tts_pad, a + 9, a + 10, a + 11, pad,
        ids.tts_end,
    ]  # fmt: skip
    with pytest.raises(ValueError, match=r"audio_codes\[1\] = 64"):
        build_ta4([1], [0, CODES], ids)


@pytest.mark.parametrize("n_text", [0, 1, 2, 3, 5, 8, 13])
def test_ta4_round_trip(ids, n_text):
    rng = random.Random(n_text)
    for n_audio in [0, 1, 3, 4, 5, 8, 13, 21, 33, 52]:
        text = [rng.randrange(20, 300) for _ in range(n_text)]
        codes = [rng.randrange(CODES) for _ in range(n_audio)]
        out = build_ta4(text, codes, ids)
        chunks = max(n_text, -(-n_audio // 4))
        assert len(out) == 5 * chunks + 1 and out[-1] == ids.tts_end
        for i in range(chunks):  # 1 text (or <tts_pad>) then 4 audio (or audio pad) per chunk
            assert not ids.is_audio(out[5 * i])
            assert all(ids.is_audio(t) for t in out[5 * i + 1 : 5 * i + 5])
        assert parse_ta4(out, ids) == (text, codes)
        assert parse_ta4([ids.tts_start, *out, 7, 8], ids) == (text, codes)  # stops at <tts_end>


def test_spoken_completion_parses_back(tok, ids):
    target = AssistantTarget(think=None, text="The speaker is male.", audio_codes=list(range(30)))
    completion = render_completion(target, tok, think=False, spoken=True)
    parsed = parse_completion(completion, tok, think_prefilled=False, spoken_prefilled=True)
    assert parsed.think is None and not parsed.think_closed
    assert parsed.spoken_text == parsed.answer == "The speaker is male."
    assert parsed.audio_codes == list(range(30))
    assert parsed.text == dec(tok, completion[:-1])  # without the final <|EOT|>

    thought = AssistantTarget(think="It sounds low.", text="Male.", audio_codes=[3, 4])
    completion = render_completion(thought, tok, think=True, spoken=True)
    assert dec(tok, completion).startswith("It sounds low.</think>\n\n<tts_start>")
    parsed = parse_completion(completion + [ids.pad] * 3, tok, True, False)
    assert (parsed.think, parsed.answer, parsed.audio_codes) == ("It sounds low.", "Male.", [3, 4])
    assert parsed.think_closed


# ---------------------------------------------------------------- parsing


def test_parse_think_and_text():
    p = parse_completion_text(
        "The voice is deep.\n</think>\n\nmale<|EOT|><|endoftext|>", True, False
    )
    assert (p.think, p.answer, p.think_closed) == ("The voice is deep.", "male", True)
    assert p.text == "The voice is deep.\n</think>\n\nmale"
    assert p.spoken_text == "" and p.audio_codes == [] and p.tool_calls == []

    p = parse_completion_text("still thinking about it", True, False)  # unclosed
    assert (p.think, p.answer, p.think_closed) == ("still thinking about it", "", False)

    p = parse_completion_text("just an answer", False, False)
    assert (p.think, p.answer) == (None, "just an answer")

    p = parse_completion_text("<think>hmm</think>ok", False, False)  # model opened think itself
    assert (p.think, p.answer) == ("hmm", "ok")


def test_parse_spoken_after_think_with_trailing_text():
    text = (
        "short</think>\n\n<tts_start>h<audio_1><audio_2><audio_3><audio_4>"
        "i<audio_5><audio_6561><audio_6561><audio_6561><tts_pad><audio_6561>"
        "<audio_6561><audio_6561><audio_6561><tts_end> extra"
    )
    p = parse_completion_text(text, True, False)
    assert p.think == "short" and p.spoken_text == "hi"
    assert p.audio_codes == [1, 2, 3, 4, 5]
    assert p.answer == "hi extra"


def test_parse_tool_calls():
    text = (
        'Let me look.<tool_call>function\nsearch\n{"query": "paris"}</tool_call>'
        "<tool_call>function\nget_date_time\n</tool_call>"
        "<tool_call>function\nget_weather\n{bad json</tool_call>"
        '<tool_call>function\ntimbre_rag\n{"query": '
    )
    p = parse_completion_text(text, False, False)
    assert p.answer == "Let me look."
    assert p.tool_calls[0] == {"name": "search", "arguments": {"query": "paris"}, "error": None}
    assert p.tool_calls[1] == {"name": "get_date_time", "arguments": {}, "error": None}
    assert p.tool_calls[2]["name"] == "get_weather"
    assert p.tool_calls[2]["arguments"] == "{bad json"
    assert "not valid JSON" in p.tool_calls[2]["error"]
    assert p.tool_calls[3]["name"] == "timbre_rag" and "unclosed" in p.tool_calls[3]["error"]


GARBAGE = [
    "",
    "</think>",
    "<think>",
    "<think><think></think></think>",
    "<tts_start>",
    "<tts_end><tts_end><tts_start><tts_start>",
    "<audio_99999999999999999999999999><audio_-1><audio_>",
    "<audio_" + "9" * 5000 + ">",
    "<tool_call>",
    "</tool_call><tool_call>function\n\n</tool_call>",
    "<tool_call>function\nx\n" + "[" * 5000 + "</tool_call>",
    "<|BOT|>function_output\n<|EOT|>",
    "\x00\ufffd<|endoftext|>",
]


@pytest.mark.parametrize("text", GARBAGE)
@pytest.mark.parametrize("think", [True, False])
@pytest.mark.parametrize("spoken", [True, False])
def test_parse_never_raises_on_garbage(text, think, spoken):
    p = parse_completion_text(text, think, spoken)
    assert isinstance(p.answer, str) and isinstance(p.spoken_text, str)
    assert all(0 <= c < 6561 for c in p.audio_codes)
    for tag in ("<think>", "</think>", "<tts_start>", "<tool_call>"):
        assert tag not in p.answer
    assert re.search(r"<audio_\d+>", p.answer) is None


def test_parse_random_ids_never_raises(tok, ids):
    rng = random.Random(0)
    vocab = len(tok)
    for _ in range(200):
        completion = [rng.randrange(vocab) for _ in range(rng.randrange(0, 40))]
        p = parse_completion(completion, tok, rng.random() < 0.5, rng.random() < 0.5)
        assert all(0 <= c < CODES for c in p.audio_codes)


# ---------------------------------------------------------------- loss masks


def test_sft_labels_mask_the_prompt_and_train_the_ta4_pads(tok, ids):
    messages = [
        {"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "gender?"}]}
    ]
    target = AssistantTarget(think="deep voice", text="male", audio_codes=list(range(13)))
    prompt = render_prompt(messages, tok, [4], think=True, spoken=True)
    for train_on in ("text", "audio", "both"):
        input_ids, labels = render_sft(
            messages, target, tok, [4], think=True, spoken=True, train_on=train_on
        )
        assert input_ids[: len(prompt)] == prompt
        assert labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt)
        completion = input_ids[len(prompt) :]
        assert dec(tok, completion).startswith("deep voice</think>\n\n<tts_start>")
        trained = [t for t in labels if t != IGNORE_INDEX]
        assert trained and all(t in completion for t in trained)
        assert ids.pad not in trained
        # the TA4 pads are generated by the policy: trained with their stream
        assert (ids.tts_pad in trained) == (train_on != "audio")
        assert (ids.audio_pad in trained) == (train_on != "text")
        audio = [t for t in trained if ids.is_audio(t)]
        text = [t for t in trained if not ids.is_audio(t)]
        assert len(audio) == (0 if train_on == "text" else 16)  # 13 codes + 3 pads: 4 chunks
        assert bool(text) == (train_on != "audio")
        if train_on != "audio":
            assert labels[-1] == ids.eot  # learns to stop
    with pytest.raises(ValueError, match="train_on"):
        completion_loss_mask([1, 2], ids, "speech")


def test_loss_mask_trains_audio_codes_written_where_text_goes(tok, ids):
    """A code outside speech is a text-stream error: RL on text must penalise it, or a text
    policy that drifts into codes is never corrected."""
    code = ids.audio_code0 + 7
    stray = [*enc(tok, "The"), code, code, *enc(tok, " voice.", "<|EOT|>")]
    assert completion_loss_mask(stray, ids, "text") == [1] * len(stray)
    assert completion_loss_mask(stray, ids, "audio") == [0] * len(stray)
    # inside speech the same code is the audio stream's, whether <tts_start> was written...
    spoken = [*enc(tok, "Hi", "<tts_start>"), code, code, ids.tts_end, *enc(tok, "<|EOT|>")]
    text_mask = completion_loss_mask(spoken, ids, "text")
    assert [m for t, m in zip(spoken, text_mask) if t == code] == [0, 0]
    assert completion_loss_mask(spoken, ids, "audio") == [int(t == code) for t in spoken]
    # ...or prefilled by the prompt
    prefilled = [code, code, ids.tts_end, ids.eot]
    assert completion_loss_mask(prefilled, ids, "text", speaking=True) == [0, 0, 1, 1]
    assert completion_loss_mask(prefilled, ids, "text") == [1, 1, 1, 1]


def test_loss_mask_never_trains_tool_output(tok, ids):
    call = enc(tok, '<tool_call>function\nsearch\n{"query": "paris"}</tool_call>', "<|EOT|>")
    tool_turn = enc(tok, "<|BOT|>function_output\nsunny and 21 degrees<|EOT|>")
    header = enc(tok, "<|BOT|>assistant\n")
    answer = enc(tok, "It is sunny.", "<|EOT|>")
    padding = [ids.pad] * 2
    mask = completion_loss_mask(call + tool_turn + header + answer + padding, ids, "both")
    assert mask == (
        [1] * len(call) + [0] * len(tool_turn) + [0] * len(header) + [1] * len(answer) + [0, 0]
    )


def test_completion_ends_with_eot_and_prompt_plus_completion_is_sft(tok):
    messages = [{"role": "user", "content": "Hello"}]
    target = AssistantTarget(think=None, text="Hello world")
    completion = render_completion(target, tok, think=False, spoken=False)
    assert dec(tok, completion) == "Hello world<|EOT|>"
    input_ids, labels = render_sft(messages, target, tok, [], think=False)
    assert input_ids[-len(completion) :] == completion == labels[-len(completion) :]
    assert json.loads(json.dumps(labels)) == labels  # plain ints
