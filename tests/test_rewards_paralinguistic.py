"""Paralinguistic rewards: label matching, a tiny audio classifier, and an LLM judge over HTTP."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from rewards import RewardRunner, get_reward
from rewards.judge import JudgeClient, JudgeError, parse_score
from rewards.paralinguistic import LABELS, asserted_levels, canonical_level, paralinguistic


@pytest.mark.parametrize(
    ("dimension", "text", "expected"),
    [
        ("speed", "The speaker talks quickly.", {"fast"}),
        ("speed", "A rapid, hurried delivery.", {"fast"}),
        ("speed", "The speech is not fast.", set()),
        ("speed", "It isn't quick at all; it is slow.", {"slow"}),
        ("speed", "Not slow, but fast.", {"fast"}),
        ("speed", "Fast rather than slow.", {"fast"}),
        ("speed", "Either fast or slow.", {"fast", "slow"}),
        ("gender", "A female voice.", {"female"}),  # "male" inside "female" does not count
        ("gender", "She sounds like a woman, not a man.", {"female"}),
        ("gender", "说话人是男性。", {"male"}),
        ("gender", "不是男性，是女性。", {"female"}),
        ("pitch", "A deep, low-pitched voice.", {"low"}),
        ("pitch", "High-pitched.", {"high"}),
        ("pitch", "Neither high nor low.", set()),
        ("emotion", "She sounds cheerful and glad.", {"happy"}),
        ("emotion", "He is definitely not angry, just calm.", {"neutral"}),
        ("vocal", "A cough, then a sneeze.", {"cough", "sneeze"}),
        ("vocal", "Someone clears throat.", {"throat clearing"}),
        ("age", "An elderly man.", {"elderly"}),
    ],
)
def test_asserted_levels(dimension, text, expected):
    assert asserted_levels(text, LABELS[dimension]) == expected


def test_canonical_level():
    assert canonical_level("Quick", LABELS["speed"]) == "fast"
    assert canonical_level("throat_clearing", LABELS["vocal"]) == "throat clearing"
    assert canonical_level("purple", LABELS["speed"]) is None


def test_paralinguistic_reward():
    completions = [
        "<think>The tempo is high.</think>The speaker talks rapidly.",
        "</think>The speaker is not fast.",
        "</think>Fast or slow, hard to say.",
        "</think>A woman.",
        "</think>anything",
        "</think>Rather quick.",
    ]
    task = ["speed", "speed", "speed", "gender", "transcribe", "speed"]
    label = ["fast", "fast", "slow", "female", "hello", "quick"]
    assert paralinguistic(None, completions, task=task, label=label) == [
        1.0,
        0.0,
        0.0,
        1.0,
        None,
        1.0,
    ]
    # A fixed dimension and extra synonyms from the recipe.
    extra = {"speed": {"fast": ["zippy"]}}
    assert paralinguistic(
        None, ["So zippy!"], dimension="speed", label=["fast"], synonyms=extra
    ) == [1.0]


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory):
    """A randomly initialised wav2vec2 gender classifier, saved offline."""
    import torch
    from transformers import (
        Wav2Vec2Config,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForSequenceClassification,
    )

    path = tmp_path_factory.mktemp("tiny_classifier")
    config = Wav2Vec2Config(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(8, 8),
        conv_stride=(5, 4),
        conv_kernel=(10, 4),
        num_conv_pos_embeddings=4,
        num_conv_pos_embedding_groups=2,
        classifier_proj_size=8,
        id2label={0: "Man", 1: "Woman"},
        label2id={"Man": 0, "Woman": 1},
    )
    torch.manual_seed(0)
    Wav2Vec2ForSequenceClassification(config).save_pretrained(path)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000).save_pretrained(path)
    return str(path)


def test_classifier_backed_reward(tiny_classifier):
    from transformers import pipeline

    rng = np.random.default_rng(0)
    clips = [rng.normal(size=16000).astype(np.float32) * 0.1 for _ in range(2)]
    predicted = [
        p[0]["label"]
        for p in pipeline("audio-classification", model=tiny_classifier)(clips, top_k=1)
    ]
    level = {"Man": "male", "Woman": "female"}
    other = {"male": "female", "female": "male"}
    answers = [
        f"</think>A {level[predicted[0]]} speaker.",
        f"</think>A {other[level[predicted[1]]]} speaker.",
    ]
    reward = get_reward("paralinguistic_classifier", model=tiny_classifier, dimension="gender")
    task = ["gender", "gender", "speed"]
    scores = reward(
        None, [*answers, "</think>fast"], audio=[*clips, clips[0]], sample_rate=16000, task=task
    )
    assert scores == [1.0, 0.0, None]  # "Man" / "Woman" mapped through the synonym sets
    # compare_to label: the prediction against the row's label; 24 kHz stereo input is resampled.
    by_label = get_reward(
        "paralinguistic_classifier", model=tiny_classifier, dimension="gender", compare_to="label"
    )
    stereo = np.stack([np.repeat(clips[0], 3)[::2]] * 2, axis=1)  # (samples, 2) at 24 kHz
    out = by_label(
        None,
        ["x"],
        audio=[stereo],
        sample_rate=[24000],
        label=[level[predicted[0]]],
        task=["gender"],
    )
    assert out in ([1.0], [0.0])


# --- judge ----------------------------------------------------------------------------------------


class JudgeHandler(BaseHTTPRequestHandler):
    """Replies 1 when the answer contains the reference label; misbehaves on request."""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append({"auth": self.headers.get("Authorization"), "body": body})
        prompt = body["messages"][0]["content"]
        label = prompt.split("Reference label: ")[1].split("\n")[0]
        answer = prompt.split("Answer: ")[1].split("\n")[0]
        if label == "hang":
            time.sleep(1.0)
        if (
            label == "flaky"
            and sum("flaky" in r["body"]["messages"][0]["content"] for r in self.server.requests)
            == 1
        ):
            self.send_response(503)
            self.end_headers()
            return
        reply = {
            "choices": [
                {"message": {"role": "assistant", "content": "1" if label in answer else "0"}}
            ]
        }
        data = json.dumps(reply).encode()
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out first
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def judge_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), JudgeHandler)
    server.daemon_threads = True
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_judge_scores_retries_and_times_out(judge_server, monkeypatch, caplog):
    monkeypatch.setenv("TEST_JUDGE_KEY", "sk-secret-123")
    url = f"http://127.0.0.1:{judge_server.server_port}/v1"
    spec = {
        "name": "paralinguistic_judge",
        "url": url,
        "model": "judge-1",
        "api_key_env": "TEST_JUDGE_KEY",
        "request_timeout_s": 0.3,
        "retries": 1,
        "backoff_s": 0.01,
    }
    runner = RewardRunner([spec])
    prompts = [
        [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "Timbre?"}]}]
    ] * 5
    completions = [
        "</think>A husky voice.",
        "</think>A clear voice.",
        "</think>husky",
        "</think>x",
        "</think>flaky",
    ]
    labels = ["husky", "husky", "hang", None, "flaky"]
    result = runner(prompts, completions, label=labels, task=["timbre"] * 5)
    assert result.per_reward["paralinguistic_judge"] == [1.0, 0.0, None, None, 1.0]
    assert result.metrics["paralinguistic_judge"]["errors"] == 0
    first = judge_server.requests[0]
    assert first["auth"] == "Bearer sk-secret-123"
    assert first["body"]["model"] == "judge-1"
    assert "Question: Timbre?" in first["body"]["messages"][0]["content"]
    assert (
        sum("flaky" in r["body"]["messages"][0]["content"] for r in judge_server.requests) == 2
    )  # retried
    assert "sk-secret-123" not in caplog.text + repr(runner.specs) + repr(
        JudgeClient(url, "m", "TEST_JUDGE_KEY")
    )


def test_judge_unreachable_is_a_counted_error_without_the_key(monkeypatch):
    monkeypatch.setenv("TEST_JUDGE_KEY", "sk-secret-123")
    server = ThreadingHTTPServer(("127.0.0.1", 0), JudgeHandler)
    port = server.server_port
    server.server_close()  # nothing listens there now
    spec = {"name": "paralinguistic_judge", "url": f"http://127.0.0.1:{port}", "model": "m"}
    spec |= {"api_key_env": "TEST_JUDGE_KEY", "retries": 1, "backoff_s": 0.01}
    result = RewardRunner([spec])(None, ["a", "b"], label=["x", "y"])
    metrics = result.metrics["paralinguistic_judge"]
    assert result.per_reward["paralinguistic_judge"] == [None, None] and metrics["errors"] == 2
    assert "JudgeError" in metrics["first_error"] and "after 2 tries" in metrics["first_error"]
    assert "sk-secret" not in metrics["first_error"]
    with pytest.raises(JudgeError):
        JudgeClient(f"http://127.0.0.1:{port}/v1/chat/completions", "m", retries=0).complete("hi")


def test_parse_score():
    assert parse_score("1") == 1.0
    assert parse_score("Score: 0.7") == 0.7
    assert parse_score("7") == 1.0
    assert parse_score("Yes, it does.") == 1.0
    assert parse_score("no") == 0.0
    assert parse_score("maybe") is None
