"""Secrets stay out of files, logs and error messages: judge URLs with credentials, and keys
pasted where the name of an environment variable belongs."""

from __future__ import annotations

import base64
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rewards import RewardRunner
from rewards.errors import UserError
from rewards.judge import JudgeClient, JudgeError
from rewards.redact import mask, redact

SECRET = "sk-test-9f8e7d6c5b4a39281706"


class Judge(BaseHTTPRequestHandler):
    """Always answers 1; records the Authorization header of each request."""

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.server.auth.append(self.headers.get("Authorization"))
        data = json.dumps({"choices": [{"message": {"content": "1"}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def judge_port():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Judge)
    server.daemon_threads = True
    server.auth = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def _closed_port() -> int:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Judge)
    port = server.server_port
    server.server_close()
    return port


def test_redact_masks_credentials_in_strings_and_configs():
    url = f"https://user:{SECRET}@judge.example.com:8443/v1?api_key={SECRET}&model=m"
    assert redact(url) == "https://***@judge.example.com:8443/v1?api_key=***&model=m"
    assert redact(f"headers: Bearer {SECRET}") == "headers: Bearer ***"
    config = {
        "rewards": [
            {"name": "paralinguistic_judge", "url": url, "api_key_env": SECRET},
            {"name": "custom", "api_key": SECRET, "token": SECRET, "api_key_env": "JUDGE_KEY"},
        ],
        "sampling": {"max_new_tokens": 12, "pad_token": "<pad>"},
    }
    text = json.dumps(redact(config))
    assert SECRET not in text
    assert "'sk-t\u2026' (28 chars)" in redact(config)["rewards"][0]["api_key_env"]
    assert redact(config)["rewards"][1]["api_key_env"] == "JUDGE_KEY"  # a name, not a secret
    assert redact(config)["sampling"] == config["sampling"]
    assert mask("abc") == "'…' (3 chars)"  # short secrets show nothing


def test_credentials_in_the_judge_url_are_sent_as_basic_auth_and_never_shown(judge_port, caplog):
    url = f"http://judge:{SECRET}@127.0.0.1:{judge_port.server_port}/v1"
    spec = {"name": "paralinguistic_judge", "url": url, "model": "m", "api_key_env": None}
    runner = RewardRunner([spec])
    result = runner(None, ["a", "b"], label=["x", "y"])
    assert result.per_reward["paralinguistic_judge"] == [1.0, 1.0]
    expected = "Basic " + base64.b64encode(f"judge:{SECRET}".encode()).decode()
    assert judge_port.auth == [expected, expected]
    shown = caplog.text + repr(runner.specs) + repr(runner.functions)
    assert SECRET not in shown and "***@127.0.0.1" in repr(runner.functions)


def test_unreachable_judge_with_credentials_fails_without_showing_them(caplog):
    url = f"http://judge:{SECRET}@127.0.0.1:{_closed_port()}/v1?key={SECRET}"
    spec = {"name": "paralinguistic_judge", "url": url, "model": "m", "api_key_env": None}
    spec |= {"retries": 0}
    with caplog.at_level(logging.WARNING):
        result = RewardRunner([spec])(None, ["a"], label=["x"])
    first_error = result.metrics["paralinguistic_judge"]["first_error"]
    assert "JudgeError" in first_error and "127.0.0.1" in first_error
    assert SECRET not in first_error + caplog.text
    with pytest.raises(JudgeError) as info:
        JudgeClient(url, "m", api_key_env=None, retries=0).complete("hi")
    assert SECRET not in str(info.value) and "key=***" in str(info.value)


def test_key_pasted_into_api_key_env_is_refused_masked(monkeypatch):
    spec = {"name": "paralinguistic_judge", "url": "http://127.0.0.1:1/v1", "model": "m"}
    with pytest.raises(ValueError, match=r"api_key_env .*'sk-t…' \(28 chars\) is no variable") as e:
        RewardRunner([{**spec, "api_key_env": SECRET}])
    assert SECRET not in str(e.value) and isinstance(e.value, UserError)  # rlhf: one line, exit 2
    hex_key = "f9e8d7c6b5a4392817069f8e7d6c5b4a"  # could be a variable's name, but none is set
    with pytest.raises(ValueError, match=r"no environment variable 'f9e8…' \(32 chars\)") as e:
        RewardRunner([{**spec, "api_key_env": hex_key}])
    assert hex_key not in str(e.value)
    with pytest.raises(ValueError, match="no environment variable 'MY_JUDGE_KEY' is set"):
        RewardRunner([{**spec, "api_key_env": "MY_JUDGE_KEY"}])
    monkeypatch.setenv("MY_JUDGE_KEY", SECRET)
    assert RewardRunner([{**spec, "api_key_env": "MY_JUDGE_KEY"}]).keys == ["paralinguistic_judge"]


def test_unset_default_key_warns_once_and_sends_no_key(judge_port, monkeypatch, caplog):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    url = f"http://127.0.0.1:{judge_port.server_port}/v1"
    spec = {"name": "paralinguistic_judge", "url": url, "model": "m-unset-default"}
    with caplog.at_level(logging.WARNING):
        runner = RewardRunner([spec])
        RewardRunner([spec])
        JudgeClient(url.replace("//", f"//judge:{SECRET}@"), "m")  # the URL's credentials go
    assert caplog.text.count("OPENAI_API_KEY is not set") == 1
    assert runner(None, ["a"], label=["x"]).per_reward["paralinguistic_judge"] == [1.0]
    assert judge_port.auth == [None]


def test_recipe_given_to_trackers_or_printed_has_no_secret():
    from rlhf.config import RLConfig, config_to_yaml, load_config
    from rlhf.metrics import tracker_config

    url = f"https://judge:{SECRET}@judge.example.com/v1"
    judge = f"{{name: paralinguistic_judge, url: '{url}', model: m, api_key_env: '{SECRET}'}}"
    config = load_config(RLConfig, None, ["model.path=m", "data.path=d", f"rewards=[{judge}]"])
    assert config.rewards[0]["url"] == url  # the run itself keeps the real URL
    flat = json.dumps(tracker_config(config))
    assert SECRET not in flat and "https://***@judge.example.com/v1" in flat
    printed = config_to_yaml(config)  # rlhf train --print-config
    assert SECRET not in printed and "https://***@judge.example.com/v1" in printed


def test_a_run_with_a_judge_leaves_no_secret_in_its_folder_or_log(
    judge_port, tiny_model_dir, tiny_dataset_dir, tmp_path, monkeypatch, caplog, capsys
):
    from rlhf.config import RLConfig, load_config
    from rlhf.trainer import RLTrainer

    monkeypatch.setenv("JUDGE_TEST_KEY", SECRET)
    url = f"http://judge:{SECRET}@127.0.0.1:{judge_port.server_port}/v1?token={SECRET}"
    judge = f"{{name: paralinguistic_judge, url: '{url}', model: m, api_key_env: JUDGE_TEST_KEY}}"
    config = load_config(
        RLConfig,
        None,
        [
            f"model.path={tiny_model_dir}",
            f"data.path={tiny_dataset_dir}",
            f"run.output_dir={tmp_path / 'run'}",
            "run.steps=1",
            "run.save_every=1",  # a checkpoint and its manifest are scanned too
            "rollout.prompts_per_step=1",
            "rollout.num_generations=2",
            "rollout.sampling.max_new_tokens=4",
            "optim.micro_batch_size=2",
            f"rewards=[{judge}]",
        ],
    )
    with caplog.at_level(logging.DEBUG):
        RLTrainer(config).train()
    assert judge_port.auth and set(judge_port.auth) == {f"Bearer {SECRET}"}  # the key was used
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert {"config.yaml", "manifest.json", "metrics.jsonl"} <= {p.name for p in files}
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), path
    out = capsys.readouterr()
    assert SECRET not in caplog.text + out.out + out.err
