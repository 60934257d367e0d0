"""Format rewards and the completion reader, on hand-made and broken completions."""

from __future__ import annotations

import pytest

from rewards import split_completion
from rewards.format import ta4_format, think_format, think_length, think_length_soft, tool_call
from rewards.text import completion_fields


def ta4(text_tokens, codes, pad=6561):
    """A TA4 block: chunks of 1 text token + 4 codes, the shorter stream padded."""
    chunks = max(len(text_tokens), -(-len(codes) // 4))
    text = list(text_tokens) + ["<tts_pad>"] * (chunks - len(text_tokens))
    codes = list(codes) + [pad] * (chunks * 4 - len(codes))
    body = "".join(
        t + "".join(f"<audio_{c}>" for c in codes[4 * i : 4 * i + 4]) for i, t in enumerate(text)
    )
    return f"<tts_start>{body}<tts_end>"


def test_split_completion_reads_think_answer_and_speech():
    spoken = "It is low.</think>\n\n" + ta4(["Low", " pitch"], list(range(10))) + " done<|EOT|>"
    parsed = split_completion(spoken)
    assert parsed.think == "It is low." and parsed.think_closed
    assert parsed.spoken_text == "Low pitch"
    assert parsed.answer == "Low pitch done"
    assert parsed.audio_codes == list(range(10))  # pads dropped
    prefilled_tts = split_completion("Hi" + "<audio_1>" * 4 + "<tts_end>")
    assert prefilled_tts.spoken_text == "Hi" and prefilled_tts.audio_codes == [1, 1, 1, 1]
    unclosed = split_completion("<think>\nstill thinking")
    assert (
        unclosed.think == "still thinking" and not unclosed.think_closed and unclosed.answer == ""
    )
    plain = split_completion("just text")
    assert plain.think is None and plain.answer == "just text"
    tool = split_completion(
        '</think><tool_call>function\nsearch\n{"query": "x"}</tool_call>Result soon.'
    )
    assert tool.answer == "Result soon."


def test_completion_fields_prefer_the_engines_parsed_fields():
    engine = {"think": ["t"], "answer": ["parsed"], "spoken_text": [""], "audio_codes": [[3]]}
    fields = completion_fields(["raw</think>raw answer"], engine)
    assert (fields[0].think, fields[0].answer, fields[0].audio_codes) == ("t", "parsed", [3])
    assert fields[0].think_closed
    # A lone `answer` column is a dataset's gold answer, not the parsed one.
    assert completion_fields(["x</think>mine"], {"answer": ["gold"]})[0].answer == "mine"
    messages = completion_fields([[{"role": "assistant", "content": "a</think>b"}]], {})
    assert messages[0].answer == "b"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>\nreason\n</think>\n\nanswer", 1.0),
        ("reason</think>answer", 1.0),  # `<think>` prefilled
        ("reason</think>answer<|EOT|>", 1.0),
        ("", 0.0),
        ("answer only", 0.0),
        ("<think>reason</think>", 0.0),  # no answer
        ("<think>  </think>answer", 0.0),  # no reasoning
        ("<think>a</think>b</think>c", 0.0),  # repeated closing tag
        ("<think>a<think>b</think>c", 0.0),  # nested opening tag
        ("x<think>a</think>b", 0.0),  # opening tag not first
        ("<think>unclosed reasoning", 0.0),
    ],
)
def test_think_format(text, expected):
    assert think_format(None, [text]) == [expected]


def test_think_format_options():
    tags = {"think_tags": ["<reasoning>", "</reasoning>"], "answer_tags": ["<answer>", "</answer>"]}
    good = "<reasoning>r</reasoning> <answer>B</answer>"
    bad = [
        "<reasoning>r</reasoning> B",
        "<reasoning>r</reasoning> <answer>B</answer><answer>C</answer>",
        "<reasoning>r <answer>B</answer></reasoning> <answer>B</answer>",
        "<reasoning>r</reasoning> <answer> </answer>",
    ]
    assert think_format(None, [good, *bad], **tags) == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert think_format(None, ["<think>r</think>a", "r</think>a"], think_prefilled=True) == [
        0.0,
        1.0,
    ]
    assert think_format(None, ["<think>r</think>a", "r</think>a"], think_prefilled=False) == [
        1.0,
        0.0,
    ]


def test_think_length_binary():
    texts = [
        "<think>one two three</think>a",
        "<think>" + "w " * 61 + "</think>a",
        "</think>a",  # no reasoning
        "<think>one two three",  # never closed
        "<think>声音很低沉</think>男",  # 5 CJK words
    ]
    assert think_length(None, texts, max_words=60) == [1.0, 0.0, 0.0, 0.0, 1.0]
    assert think_length(None, texts) == [1.0, 1.0, 0.0, 0.0, 1.0]  # "reasoning present"
    assert think_length(None, texts, max_words=4) == [1.0, 0.0, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="tokenizer"):
        think_length(None, texts, max_tokens=10)


def test_think_length_soft_follows_audsemthinker():
    def text(n):
        return "<think>" + "w " * n + "</think>a"

    scores = think_length_soft(None, [text(50), text(100), text(103), text(110), "a"])
    assert scores == pytest.approx([1.0, 0.5, 0.2, 0.0, 0.0])


def test_ta4_format():
    good = ta4(["Hel", "lo", " there"], list(range(7)))
    assert "<tts_pad>" not in good and "<audio_6561>" in good
    long_text = ta4(["a", "b", "c"], [1, 2, 3, 4])
    assert "<tts_pad>" not in long_text
    more_audio = ta4(["a"], list(range(9)))
    assert more_audio.count("<tts_pad>") == 2
    a4 = "<audio_1>" * 4
    cases = {
        good: 1.0,
        "Sure.</think>\n\n" + more_audio + " trailing text": 1.0,
        long_text[len("<tts_start>") :]: 1.0,  # `<tts_start>` prefilled
        "plain text answer": None,
        "": None,
        "<tts_start>a" + a4: 0.0,  # never closed
        "<tts_start>a" + a4 + "<tts_end><tts_end>": 0.0,  # unbalanced
        "<tts_start>a<audio_1><audio_1><audio_1><tts_end>": 0.0,  # 3 audio tokens
        "<tts_start>" + a4 + "a<tts_end>": 0.0,  # audio before text
        "<tts_start><tts_pad>" + a4 + "a" + a4 + "<tts_end>": 0.0,  # text pad in the middle
        "<tts_start>a<audio_6561><audio_1><audio_1><audio_1><tts_end>": 0.0,  # audio pad in the middle
        "<tts_start>a" + a4 + "<tts_pad>" + "<audio_6561>" * 4 + "<tts_end>": 0.0,  # chunk of pads
        "<tts_start>a<audio_9999><audio_1><audio_1><audio_1><tts_end>": 0.0,  # code past the codebook
        "<tts_start><tts_end>": 0.0,
        "text <audio_5> stray": 0.0,
    }
    assert ta4_format(None, list(cases)) == list(cases.values())
    assert ta4_format(None, ["plain text", "plain"], spoken=[True, False]) == [0.0, None]


def test_tool_call_validity():
    tools = [
        {
            "type": "function",
            "function": {"name": "get_weather", "parameters": {"required": ["location"]}},
        }
    ]

    def call(name, args):
        return f"<tool_call>function\n{name}\n{args}</tool_call>"

    texts = [
        call("get_weather", '{"location": "Paris"}'),
        call("get_weather", "{}"),  # missing required argument
        call("search", '{"query": "x"}'),  # unknown tool
        call("get_weather", "{not json"),
        call("get_weather", "[1, 2]"),
        call("get_weather", '{"location": "Paris"}')
        + "<tool_call>function\nget_weather\n{}",  # unclosed
        "no tool call",
    ]
    assert tool_call(None, texts, known_tools=tools) == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, None]
    assert tool_call(None, texts[:3], tools_column="tools", **{"tools": [tools] * 3}) == [
        1.0,
        0.0,
        0.0,
    ]
    assert tool_call(None, [call("search", '{"q": 1}'), call("bad name", "{}")]) == [1.0, 0.0]
    assert tool_call(None, [call("search", "{}")], known_tools=["search", "get_date_time"]) == [1.0]
