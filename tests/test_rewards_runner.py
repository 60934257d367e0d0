"""The reward API: registry, specs, and a runner that turns every failure into a counted None."""

from __future__ import annotations

import asyncio
import math
import sys
import time

import pytest

import rewards
from rewards import RewardResult, RewardRunner, RewardSpec, get_reward, load_specs, reward

COMPLETIONS = [
    "<think>\nThe voice is deep.\n</think>\n\nThe speaker is male.",
    "no reasoning at all",
    "",
]


def constant(value):
    def fn(prompts, completions, **kwargs):
        return [value] * len(completions)

    fn.__name__ = f"constant_{value}"
    return fn


# --- registry -----------------------------------------------------------------------------------


def test_rewards_imports_neither_rlhf_nor_rollouts():
    import subprocess

    code = "import sys, rewards; print(sorted(m for m in sys.modules if m.split('.')[0] in ('rlhf', 'rollouts')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_registered_names():
    assert set(rewards.registered_rewards()) >= {
        "think_format",
        "think_length",
        "think_length_soft",
        "ta4_format",
        "tool_call",
        "transcription",
        "spoken_fidelity",
        "paralinguistic",
        "paralinguistic_classifier",
        "paralinguistic_judge",
        "accuracy",
    }


def test_decorator_and_lookup_by_name_and_module_path():
    @reward("test_answer_length")
    def answer_length(prompts, completions, max_chars=10, **kwargs):
        return [float(len(c) <= max_chars) for c in completions]

    assert get_reward("test_answer_length") is answer_length
    bound = get_reward("test_answer_length", max_chars=100)
    assert bound(prompts=None, completions=["x" * 50]) == [1.0]
    assert bound.__name__ == "answer_length"
    by_path = get_reward("rewards.format:think_length", max_words=3)
    assert by_path(prompts=None, completions=COMPLETIONS) == [0.0, 0.0, 0.0]
    assert get_reward("rewards.format:think_length")(None, COMPLETIONS) == [1.0, 0.0, 0.0]


def test_registering_a_second_function_under_a_taken_name_fails():
    with pytest.raises(ValueError, match="already registered"):
        reward("think_length")(constant(1.0))


def test_unknown_name_lists_the_nearest():
    with pytest.raises(ValueError, match="did you mean think_length") as info:
        get_reward("thinklength")
    assert "registered:" in str(info.value)
    with pytest.raises(ValueError, match="cannot import module"):
        get_reward("no_such_package.module:fn")
    with pytest.raises(ValueError, match="has no 'nope'"):
        get_reward("rewards.format:nope")


def test_unknown_or_missing_parameter_is_caught_when_building():
    with pytest.raises(ValueError, match="no parameter 'max_word'; did you mean 'max_words'"):
        get_reward("think_length", max_word=60)
    with pytest.raises(ValueError, match=r"needs parameter\(s\) \['url', 'model'\]"):
        get_reward("paralinguistic_judge")


def test_factory_and_class_rewards():
    def make(threshold):  # no `completions` parameter: a factory
        return lambda prompts, completions, **kw: [float(len(c) > threshold) for c in completions]

    assert get_reward(make, threshold=3)(None, ["ab", "abcd"]) == [0.0, 1.0]

    class Scorer:
        def __init__(self, bonus=0.0):
            self.bonus = bonus

        def __call__(self, prompts, completions, **kwargs):
            return [1.0 + self.bonus] * len(completions)

    assert get_reward(Scorer, bonus=0.5)(None, ["a"]) == [1.5]


# --- specs ----------------------------------------------------------------------------------------


def test_spec_from_recipe_entry_splits_params():
    spec = RewardSpec.from_dict(
        {"name": "think_length", "max_words": 60, "weight": 0.2, "where": {"task": "x"}}
    )
    assert (spec.name, spec.weight, spec.params, spec.where) == (
        "think_length",
        0.2,
        {"max_words": 60},
        {"task": "x"},
    )
    assert spec.key == "think_length" and spec.timeout_s == 60.0
    with pytest.raises(ValueError, match=r"rewards\[0\]: missing 'name'"):
        RewardSpec.from_dict({"weight": 1}, "rewards[0]")
    with pytest.raises(ValueError, match="must be numbers"):
        RewardSpec.from_dict({"name": "x", "weight": "heavy"})


def test_load_specs_from_yaml(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(
        "rewards:\n  - {name: think_format}\n  - {name: think_length, max_words: 60, weight: 0.2}\n"
    )
    specs = load_specs(path)
    assert [s.key for s in specs] == ["think_format", "think_length"]
    path.write_text("other: 1\n")
    with pytest.raises(ValueError, match=r"r\.yaml: expected a list or a 'rewards' key"):
        load_specs(path)
    path.write_text("- {weight: 1}\n")
    with pytest.raises(ValueError, match=r"r\.yaml: rewards\[0\]: missing 'name'"):
        load_specs(path)


def test_runner_rejects_duplicate_keys_unless_aliased():
    with pytest.raises(ValueError, match="alias"):
        RewardRunner(["think_length", {"name": "think_length", "max_words": 5}])
    runner = RewardRunner(
        ["think_length", {"name": "think_length", "max_words": 2, "alias": "short_think"}]
    )
    assert runner.keys == ["think_length", "short_think"]


# --- combination and metrics ----------------------------------------------------------------------


def test_weighted_sum_skips_none_and_a_sample_with_nothing_has_total_none():
    def half(prompts, completions, **kwargs):
        return [0.5, None, None]

    def one_or_none(prompts, completions, **kwargs):
        return [1.0, 1.0, None]

    result = RewardRunner([RewardSpec(half, weight=2.0), RewardSpec(one_or_none, weight=0.5)])(
        None, COMPLETIONS
    )
    assert result.total == [1.5, 0.5, None]
    assert result.per_reward["half"] == [0.5, None, None]
    assert result.metrics["half"] == {
        "mean": 0.5,
        "std": 0.0,
        "applicable": pytest.approx(1 / 3),
        "errors": 0,
        "first_error": None,
    }
    mean = RewardRunner(
        [RewardSpec(half, weight=2.0), RewardSpec(one_or_none, weight=0.5)], combine="mean"
    )
    assert mean(None, COMPLETIONS).total == [pytest.approx(1.5 / 2.5), 1.0, None]


def test_weight_zero_is_logged_but_not_in_total():
    result = RewardRunner([RewardSpec(constant(1.0), weight=0.0)])(None, ["a"])
    assert result.per_reward["constant_1.0"] == [1.0] and result.total == [None]


def test_where_scores_only_matching_rows():
    seen = {}

    def spy(prompts, completions, task, **kwargs):
        seen["task"] = task
        return [1.0] * len(completions)

    runner = RewardRunner([RewardSpec(spy, where={"task": ["gender", "pitch"]})])
    result = runner(
        None, ["a", "b", "c"], task=["gender", "transcribe", "pitch"], sample_rate=16000
    )
    assert result.per_reward["spy"] == [1.0, None, 1.0]
    assert seen["task"] == ["gender", "pitch"]
    missing = RewardRunner([RewardSpec(spy, where={"dimension": "x"})])(None, ["a"])
    assert missing.per_reward["spy"] == [None]
    assert "no column 'dimension'" in missing.metrics["spy"]["first_error"]


def test_concat_and_flat_metrics():
    runner = RewardRunner([constant(1.0)])
    merged = RewardResult.concat([runner(None, ["a"]), runner(None, ["b", "c"])])
    assert merged.per_reward["constant_1.0"] == [1.0, 1.0, 1.0] and merged.total == [1.0] * 3
    flat = merged.flat_metrics()
    assert flat["rewards/constant_1.0/mean"] == 1.0 and flat["rewards/total/applicable"] == 1.0
    assert merged.per_sample() == [{"constant_1.0": 1.0}] * 3


# --- adversarial ----------------------------------------------------------------------------------


def returns_nan(prompts, completions, **kwargs):
    return [math.nan, 1.0, math.inf]


def raises(prompts, completions, **kwargs):
    raise RuntimeError("boom")


def wrong_length(prompts, completions, **kwargs):
    return [1.0]


def not_a_list(prompts, completions, **kwargs):
    return 1.0


def hangs(prompts, completions, **kwargs):
    time.sleep(5)
    return [1.0] * len(completions)


async def hangs_async(prompts, completions, **kwargs):
    await asyncio.sleep(5)
    return [1.0] * len(completions)


def test_failures_become_counted_none_for_that_reward_only(caplog):
    specs = [
        RewardSpec(returns_nan),
        RewardSpec(raises),
        RewardSpec(wrong_length),
        RewardSpec(not_a_list),
        RewardSpec(hangs, timeout_s=0.2),
        RewardSpec(hangs_async, timeout_s=0.2),
        RewardSpec("think_format"),
    ]
    start = time.monotonic()
    result = RewardRunner(specs)(None, COMPLETIONS)
    assert time.monotonic() - start < 2.0  # the hung functions were abandoned, not awaited
    assert result.per_reward["returns_nan"] == [None, 1.0, None]
    assert result.metrics["returns_nan"]["errors"] == 2
    assert "nan" in result.metrics["returns_nan"]["first_error"]
    assert result.per_reward["raises"] == [None] * 3
    assert result.metrics["raises"]["first_error"] == "RuntimeError: boom"
    assert result.metrics["wrong_length"]["first_error"] == "returned 1 scores for 3 completions"
    assert "not a list" in result.metrics["not_a_list"]["first_error"]
    for key in ("hangs", "hangs_async"):
        assert result.per_reward[key] == [None] * 3
        assert result.metrics[key] == {
            "mean": None,
            "std": None,
            "applicable": 0.0,
            "errors": 3,
            "first_error": "timed out after 0.2 s",
        }
    assert result.per_reward["think_format"] == [1.0, 0.0, 0.0]  # unaffected
    assert result.total == [1.0, 1.0, 0.0]
    assert "reward raises: 3 of 3 samples lost: RuntimeError: boom" in caplog.text


def test_async_rewards_run_concurrently():
    async def slow(prompts, completions, **kwargs):
        await asyncio.sleep(0.3)
        return [1.0] * len(completions)

    specs = [RewardSpec(slow, alias=f"slow{i}") for i in range(4)]
    start = time.monotonic()
    result = RewardRunner(specs)(None, ["a"])
    assert time.monotonic() - start < 0.9
    assert result.total == [4.0]


def test_runner_works_inside_a_running_event_loop():
    async def main():
        return RewardRunner(["think_format"])(None, COMPLETIONS[:1])

    assert asyncio.run(main()).total == [1.0]


def test_adversarial_completions_through_all_text_rewards():
    big = "<think>" + "word " * 20_000 + "</think>" + "answer " * 5_000  # ~130 kB
    texts = [
        "",
        "<think><think>a</think></think>b",
        big,
        "<think>嗯，声音很低沉。</think>说话人是男性。",
        "🎤 ünïcödé </think> ✓",
    ]
    names = [
        n
        for n in rewards.registered_rewards()
        if n in ("think_format", "think_length", "think_length_soft", "ta4_format", "tool_call")
    ]
    runner = RewardRunner(
        [{"name": n, "timeout_s": 10} for n in names]
        + [
            {"name": "paralinguistic", "dimension": "gender"},
            {"name": "accuracy"},
            {"name": "transcription"},
        ]
    )
    label = ["", "b", "answer", "男性", "✓"]
    start = time.monotonic()
    result = runner(None, texts, label=label, task=["gender"] * 5)
    assert time.monotonic() - start < 5
    assert all(m["errors"] == 0 for m in result.metrics.values()), result.metrics
    assert result.per_reward["think_format"] == [0.0, 0.0, 1.0, 1.0, 1.0]
    assert result.per_reward["think_length"][2] == 1.0
    assert result.per_reward["think_length_soft"][2] == 0.0
    assert result.per_reward["paralinguistic"][3] == 1.0  # 男性 → male
    assert result.per_reward["transcription"][0] is None  # empty reference: nothing to compare


# --- TRL reward functions and recipes -------------------------------------------------------------


def test_trl_reward_functions_pass_through_unchanged():
    from trl.rewards import think_format_reward

    messages = [
        [{"role": "assistant", "content": "<think>\nhmm\n</think>\nyes"}],
        [{"role": "assistant", "content": "yes"}],
    ]
    result = RewardRunner([think_format_reward, "think_format"])(None, messages)
    assert result.per_reward["think_format_reward"] == [1.0, 0.0]
    assert result.per_reward["think_format"] == [1.0, 0.0]  # ours read TRL's message form too
    # String completions (our engine's): as_messages wraps them for functions written for messages.
    strings = [m[0]["content"] for m in messages]
    wrapped = RewardRunner([{"name": "trl.rewards:think_format_reward", "as_messages": True}])(
        None, strings
    )
    assert wrapped.per_reward["trl.rewards:think_format_reward"] == [1.0, 0.0]
    # A TRL factory by module path, with its parameters from the recipe.
    overlong = RewardRunner(
        [
            {
                "name": "trl.rewards:get_soft_overlong_punishment",
                "max_completion_len": 10,
                "soft_punish_cache": 5,
            }
        ]
    )(None, strings, completion_ids=[[1] * 4, [1] * 10])
    assert overlong.per_reward["trl.rewards:get_soft_overlong_punishment"] == [0.0, -1.0]


def test_trl_accuracy_reward():
    from trl.rewards import accuracy_reward

    messages = [[{"role": "assistant", "content": r"\boxed{\frac{1}{3}}"}]]
    result = RewardRunner([accuracy_reward])(None, messages, solution=[r"\frac{1}{3}"])
    try:
        import math_verify  # noqa: F401
    except ImportError:  # not a dependency: the runner reports it, training would go on
        assert result.per_reward["accuracy_reward"] == [None]
        assert "math_verify" in result.metrics["accuracy_reward"]["first_error"]
    else:
        assert result.per_reward["accuracy_reward"] == [1.0]


def test_step_audio_r1_reward_is_a_recipe_of_two_specs():
    runner = RewardRunner(
        load_specs([{"name": "accuracy", "weight": 0.8}, {"name": "think_length", "weight": 0.2}])
    )
    completions = [
        "<think>\nOption B fits.\n</think>\n\nB",  # correct, reasoned
        "<think>\nOption A.\n</think>\n\nA",  # wrong, reasoned
        "</think>\n\nB",  # correct, no reasoning
        "B",  # correct, think never closed
    ]
    result = runner(None, completions, label=["B"] * 4)
    assert result.total == pytest.approx([1.0, 0.2, 0.8, 0.8])


def test_hung_thread_does_not_block_interpreter_exit(tmp_path):
    import subprocess

    script = (
        "import time\nfrom rewards import RewardRunner, RewardSpec\n"
        "def forever(prompts, completions, **kw):\n    time.sleep(3600)\n"
        "r = RewardRunner([RewardSpec(forever, timeout_s=0.1)])(None, ['a'])\n"
        "print(r.metrics['forever']['first_error'])\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "timed out after 0.1 s"


def test_max_workers_limits_concurrency_and_prompts_pass_through():
    async def slow(prompts, completions, **kwargs):
        assert prompts == ["p"]
        await asyncio.sleep(0.2)
        return [1.0]

    start = time.monotonic()
    result = RewardRunner(
        [RewardSpec(slow, alias="a"), RewardSpec(slow, alias="b")], max_workers=1
    )(["p"], ["c"])
    assert time.monotonic() - start >= 0.4 and result.total == [2.0]


def test_resolve_helper_objects_by_module_path():
    from rewards.registry import resolve
    from rewards.text import split_completion

    assert resolve("rewards.text:split_completion") is split_completion
    assert resolve(len) is len
    with pytest.raises(ValueError, match=r"package\.module:name"):
        resolve("split_completion")


def test_callable_objects_are_rewards_not_factories():
    from trl.rewards import get_soft_overlong_punishment

    punish = get_soft_overlong_punishment(max_completion_len=10, soft_punish_cache=5)  # an object
    result = RewardRunner([RewardSpec(punish, alias="overlong")])(
        None, ["a"], completion_ids=[[1] * 12]
    )
    assert result.per_reward["overlong"] == [-1.0]

    def by_ids(completion_ids, **kwargs):  # takes **kwargs: a reward, though no `completions`
        return [float(len(ids)) for ids in completion_ids]

    assert get_reward(by_ids) is by_ids


def test_runner_pickles_for_ray_workers():
    import pickle

    specs = [
        {"name": "think_length", "max_words": 5},
        {"name": "paralinguistic_judge", "url": "u", "model": "m"},
    ]
    runner = pickle.loads(pickle.dumps(RewardRunner(specs)))
    assert runner(None, ["<think>a</think>b"]).per_reward["think_length"] == [1.0]
    assert asyncio.iscoroutinefunction(type(runner.functions["paralinguistic_judge"]).__call__)


def returns_each(values):
    def fn(prompts, completions, **kwargs):
        return list(values)

    return fn


@pytest.mark.parametrize(
    ("score", "problem"),
    [
        ("0.5", "returned str '0.5', not a number"),
        (b"1", "returned bytes b'1', not a number"),
        (1 + 2j, "returned complex (1+2j), not a number"),
        ({"score": 1.0}, "returned dict {'score': 1.0}, not a number"),
        ([0.5], "returned list [0.5], not a number"),
        (object(), "returned object <object object at"),
        (float("inf"), "returned inf"),
        (-math.inf, "returned -inf"),
        (math.nan, "returned nan"),
        (1e30, "returned 1e+30, beyond the ±1e+06 a score may reach"),
        ("x" * 500, "returned str 'xxxxxxxx"),
    ],
)
def test_scores_that_are_not_usable_numbers_are_counted_errors(score, problem, caplog):
    fn = returns_each([1.0, score, 0.0])
    fn.__name__ = "odd"
    result = RewardRunner([fn, "think_format"])(None, COMPLETIONS)
    assert result.per_reward["odd"] == [1.0, None, 0.0]
    metrics = result.metrics["odd"]
    assert metrics["errors"] == 1 and metrics["first_error"].startswith(f"sample 1: {problem}")
    assert len(metrics["first_error"]) < 120  # a huge return does not flood the log
    assert f"reward odd: 1 of 3 samples lost: sample 1: {problem}" in caplog.text
    assert result.total == [2.0, 0.0, 0.0]  # the sample keeps the other reward's score


def test_numpy_and_torch_scalars_bools_and_large_but_sane_scores_are_accepted():
    import decimal

    import numpy as np
    import torch

    scores = [np.float32(0.25), np.int64(-3), torch.tensor(0.5), np.array(2.0), True, -1e6]
    scores.append(decimal.Decimal("0.75"))
    result = RewardRunner([returns_each(scores)])(None, ["c"] * len(scores))
    (values,) = result.per_reward.values()
    assert values == [0.25, -3.0, 0.5, 2.0, 1.0, -1e6, 0.75]
    assert all(type(v) is float for v in values)
    assert next(iter(result.metrics.values()))["errors"] == 0
