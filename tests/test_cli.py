"""The `rlhf` command: help, version, unknown commands, user errors as one line and exit 2."""

from __future__ import annotations

import json
import subprocess
import sys

from rlhf.cli import COMMANDS, build_parser, main, parse_arguments


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)


def test_unknown_command_is_an_error(capsys):
    assert main(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err


def test_bad_recipe_key_names_the_file_and_nearest_key(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("rollout:\n  num_generation: 4\n")
    assert main(["train", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert str(recipe) in err and "did you mean 'rollout.num_generations'" in err


def test_missing_recipe_is_reported(tmp_path, capsys):
    assert main(["train", str(tmp_path / "nope.yaml")]) == 2
    assert "recipe not found" in capsys.readouterr().err


def test_bare_rlhf_prints_usage_to_stderr_with_exit_2(capsys):
    assert main([]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "usage: rlhf" in captured.err


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("rlhf (speech-rlhf) ")


def test_a_mistyped_command_gets_the_nearest(capsys):
    assert main(["trian"]) == 2
    assert "did you mean 'train'?" in capsys.readouterr().err


def test_resume_does_not_swallow_the_next_override():
    _, parser = build_parser("train")
    args = parse_arguments(parser, ["r.yaml", "--resume", "run.steps=5"])
    assert args.resume is True and args.resume_from is None
    assert args.overrides == ["run.steps=5"]
    args = parse_arguments(parser, ["r.yaml", "--resume-from", "runs/x/step-10", "run.steps=5"])
    assert args.resume_from == "runs/x/step-10" and args.overrides == ["run.steps=5"]


def test_import_of_the_cli_and_of_each_command_loads_no_torch():
    """`rlhf --help` and `rlhf CMD --help` import only these: no torch, transformers, datasets
    (the measured latency is `rlhf bench cli`)."""
    modules = sorted({module for module, _ in COMMANDS.values()})
    code = (
        "import sys, importlib\n"
        f"for name in ['rlhf.cli', *{modules!r}]:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_plot_without_metrics_is_one_line_exit_2(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == f"rlhf plot: error: no metrics.jsonl in {tmp_path}\n"
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "note": "text only"}\n')
    assert main(["plot", str(tmp_path)]) == 2
    assert "no numeric metrics to plot" in capsys.readouterr().err


def test_eval_uses_the_checkpoints_dtype_unless_told(tmp_path):
    from rlhf.evaluate import checkpoint_dtype

    assert checkpoint_dtype(tmp_path) == "float32"  # no config.json
    (tmp_path / "config.json").write_text(json.dumps({"dtype": "bfloat16"}))
    assert checkpoint_dtype(tmp_path) == "bfloat16"
    _, parser = build_parser("eval")
    args = parser.parse_args(
        ["--model", "m", "--data", "d", "--device", "cpu", "--dtype", "float32"]
    )
    assert (args.device, args.dtype) == ("cpu", "float32")


def test_eval_of_a_missing_checkpoint_is_one_line(tmp_path, capsys):
    assert main(["eval", "--model", str(tmp_path / "nope"), "--data", str(tmp_path)]) == 2
    assert "--model: " in capsys.readouterr().err
