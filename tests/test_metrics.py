"""Metrics: reduced truthfully, logged on the main process with the recipe, readable in a log file."""

from __future__ import annotations

import io
import json
import math

import pytest

from rlhf.config import RLConfig, load_config
from rlhf.metrics import MetricsLogger, StepMetrics, StepProgress, explained_variance


def test_step_metrics_weigh_means_add_shares_and_keep_maxima():
    metrics = StepMetrics()
    # two micro-batches of 30 and 10 trained tokens; the loss shares are whole-batch normalised
    metrics.mean({"clip_fraction": 0.2}, weight=30)
    metrics.mean({"clip_fraction": 0.6}, weight=10)
    metrics.total({"policy_loss": 0.75}, scale=0.5)  # two iterations
    metrics.total({"policy_loss": 0.25}, scale=0.5)
    metrics.maximum({"ratio_max": 1.1})
    metrics.maximum({"ratio_max": 1.3})
    metrics.mean({"empty": 1.0}, weight=0)
    reduced = metrics.reduce()
    assert reduced["clip_fraction"] == pytest.approx(0.3)
    assert reduced["policy_loss"] == pytest.approx(0.5)
    assert reduced["ratio_max"] == 1.3
    assert math.isnan(reduced["empty"])  # no trained token: no value, not 0
    with pytest.raises(ValueError, match="added as max and as mean"):
        metrics.mean({"ratio_max": 1.0})


def test_explained_variance():
    returns = [1.0, 2.0, 3.0, 4.0]

    def sums(values):
        residual = [r - v for r, v in zip(returns, values)]
        return [
            len(returns),
            sum(returns),
            sum(r * r for r in returns),
            sum(residual),
            sum(d * d for d in residual),
        ]

    assert explained_variance(sums(returns)) == pytest.approx(1.0)  # a perfect critic
    assert explained_variance(sums([2.5] * 4)) == pytest.approx(0.0)  # the mean only
    assert explained_variance(sums([4.0, 3.0, 2.0, 1.0])) < 0  # worse than the mean
    assert math.isnan(explained_variance([4, 8.0, 16.0, 0.0, 0.0]))  # constant returns


def recipe(tmp_path) -> RLConfig:
    return load_config(
        RLConfig,
        None,
        [
            "model.path=/models/tiny",
            "data.path=/data/speech",
            "algorithm.beta=0.04",
            f"run.output_dir={tmp_path}",
            "rewards=[{name: think_length, max_words: 4}]",
        ],
    )


def hparams(run_dir) -> dict:
    """The hyper-parameters TensorBoard shows for the run (its hparams plugin's session info)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    found = {}
    for events in (run_dir / "tensorboard").rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        try:
            content = accumulator.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        except KeyError:  # the scalars' file
            continue
        info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
        for key, value in info.hparams.items():
            found[key] = getattr(value, value.WhichOneof("kind"))
    return found


def scalars(run_dir, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    points = []
    for events in (run_dir / "tensorboard").glob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        if tag in accumulator.Tags()["scalars"]:
            points += [(e.step, e.value) for e in accumulator.Scalars(tag)]
    return points


def test_the_recipe_reaches_tensorboard_and_only_the_main_process_writes(tmp_path):
    config = recipe(tmp_path / "run")
    worker = MetricsLogger(tmp_path / "run", ["tensorboard"], config=config, main_process=False)
    worker.log(1, {"loss": 9.0})
    worker.log_samples(1, [{"prompt_id": "p", "rewards": {}}])
    worker.close()
    assert not (tmp_path / "run").exists()  # a non-main process writes nothing

    logger = MetricsLogger(tmp_path / "run", ["tensorboard"], config=config)
    logger.log(1, {"loss": 0.5, "reward": {"think_length": {"mean": 0.25}}})
    logger.close()
    found = hparams(tmp_path / "run")
    assert found["algorithm/beta"] == pytest.approx(0.04)
    assert found["model/path"] == "/models/tiny"
    assert found["rewards"] == json.dumps([{"name": "think_length", "max_words": 4}])
    assert scalars(tmp_path / "run", "loss") == [(1, 0.5)]
    assert scalars(tmp_path / "run", "reward/think_length/mean") == [(1, 0.25)]
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"step": 1, "loss": 0.5, "reward/think_length/mean": 0.25}
    ]


class TableTracker:
    """A tracker with tables, as W&B's."""

    def __init__(self):
        self.tables = []

    def log(self, values, step=None):
        pass

    def log_table(self, name, columns, data, step=None):
        self.tables.append((name, columns, data, step))

    def finish(self):
        pass


def test_sample_completions_go_to_samples_jsonl_and_tracker_tables(tmp_path):
    logger = MetricsLogger(tmp_path)
    tracker = TableTracker()
    logger.trackers = [tracker]
    rows = [
        {"prompt_id": "p0", "think": "low", "answer": "male", "rewards": {"acc": 1.0}, "total": 1},
        {"prompt_id": "p0", "think": None, "answer": "?", "rewards": {"acc": None}, "total": None},
    ]
    logger.log_samples(10, rows)
    written = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert written == [{"step": 10, **row} for row in rows]
    name, columns, data, step = tracker.tables[0]
    assert (name, step) == ("samples", 10)
    assert columns == ["step", "prompt_id", "think", "answer", "total", "acc"]
    assert data == [[10, "p0", "low", "male", 1, 1.0], [10, "p0", None, "?", None, None]]
    logger.truncate_after(5)  # a resumed run redoes step 10
    assert (tmp_path / "samples.jsonl").read_text() == ""


def test_an_unwritable_run_folder_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match=r"run\.output_dir: cannot write .*file/run"):
        MetricsLogger(tmp_path / "file" / "run")


class LogFile(io.StringIO):
    def isatty(self) -> bool:
        return False


def test_progress_off_a_terminal_is_a_plain_line_every_n_steps():
    out = LogFile()
    with StepProgress("RL", 5, completed=1, every=2, stream=out) as progress:
        for step in range(2, 6):
            progress.update(step, {"reward": 0.5, "accuracy": 0.25})
    lines = out.getvalue().splitlines()
    assert [line.split("  ")[0] for line in lines] == ["RL step 2/5", "RL step 4/5", "RL step 5/5"]
    assert "reward 0.500  accuracy 0.250  " in lines[0]
    assert " s/step  ETA 0:00:0" in lines[0]
    assert lines[-1].endswith("ETA 0:00:00")
    quiet = LogFile()
    with StepProgress("RL", 5, stream=quiet, enabled=False) as progress:
        progress.update(5, {"reward": 0.5})
    assert quiet.getvalue() == ""  # not the main process


def test_report_to_all_starts_every_installed_tracker_and_only_those(tmp_path):
    from accelerate.tracking import get_available_trackers

    installed = {str(t) for t in get_available_trackers()}
    logger = MetricsLogger(tmp_path, ["all"], config={"a": 1})
    started = {type(t).name for t in logger.trackers}
    logger.close()
    assert "tensorboard" in started  # a dev dependency
    assert started == {"tensorboard", "wandb", "trackio"} & installed
