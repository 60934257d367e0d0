"""The `rlhf` command: help, unknown commands and bad recipes fail clearly."""

from __future__ import annotations

from rlhf.cli import COMMANDS, main


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
