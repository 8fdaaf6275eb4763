"""What a new user meets first: CLI errors, --log-level placement, help texts, docs."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest

import pipeline.commands.train as train_command
from pipeline.cli import build_parser, main
from pipeline.stream.config import ConfigError, ObservabilitySection
from pipeline.stream.observability import progress_line

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _no_genrec_environment(monkeypatch):
    import os

    for name in list(os.environ):
        if name.startswith("GENREC_"):
            monkeypatch.delenv(name)


def test_print_config_shows_per_source_run_state(capsys):
    assert main(["train", "--print-config", "--source", "kafka", "--topic", "clicks"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["checkpoint"]["dir"] == "./checkpoints/kafka-clicks"
    assert cfg["run_dir"] == "./runs/kafka-clicks"
    assert cfg["registry"]["uri"] == "./registry"
    assert main(["train", "--print-config"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["checkpoint"]["dir"] == "./checkpoints/synthetic"


def test_malformed_yaml_is_a_one_line_cli_error(tmp_path, capsys):
    path = tmp_path / "train.yaml"
    path.write_text("train:\n  lr: 0.1\n bad: 1\n")
    assert main(["train", "--config", str(path), "--print-config"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"genrec train: error: {path}:3:2: expected <block end>, but found "
        "'<block mapping start>' (while parsing a block mapping at line 1)"
    ]


def test_environment_error_through_the_cli_names_the_variable(monkeypatch, capsys):
    monkeypatch.setenv("GENREC_TRAIN__LR", "abc")
    assert main(["train", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("genrec train: error: GENREC_TRAIN__LR='abc': Input should be a valid")
    assert "Traceback" not in err and "errors.pydantic.dev" not in err


def test_raw_validation_and_yaml_errors_take_the_one_line_path(monkeypatch, capsys):
    import yaml
    from pydantic import BaseModel

    class Settings(BaseModel):
        port: int

    def raise_validation(_args: argparse.Namespace) -> int:
        Settings.model_validate({"port": "x"})
        return 0

    monkeypatch.setattr(train_command, "run", raise_validation)
    assert main(["train"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "genrec train: error: port: Input should be a valid integer, unable to parse string as "
        "an integer"
    ]

    def raise_yaml(_args: argparse.Namespace) -> int:
        yaml.safe_load("a: [1")
        return 0

    monkeypatch.setattr(train_command, "run", raise_yaml)
    assert main(["train"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert re.fullmatch(r"genrec train: error: .*:1:6: expected ',' or '\]'.*", line), line


def test_log_level_is_accepted_after_the_subcommand(tmp_path):
    parser = build_parser()
    assert parser.parse_args(["train"]).log_level == "INFO"
    assert parser.parse_args(["--log-level", "WARNING", "train"]).log_level == "WARNING"
    assert parser.parse_args(["train", "--log-level", "DEBUG"]).log_level == "DEBUG"
    assert parser.parse_args(["registry", "list", "--log-level", "ERROR"]).log_level == "ERROR"
    path = tmp_path / "train.yaml"
    path.write_text("train: [\n")
    with pytest.raises(ConfigError):  # DEBUG: the traceback instead of the one-line error
        main(["train", "--config", str(path), "--log-level", "DEBUG"])


def _subcommands(
    parser: argparse.ArgumentParser, prefix: str = "genrec"
) -> list[tuple[str, argparse.ArgumentParser]]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in {id(p): (n, p) for n, p in action.choices.items()}.values():
                out.append((f"{prefix} {name}", sub))
                out.extend(_subcommands(sub, f"{prefix} {name}"))
    return out


SUBCOMMANDS = dict(_subcommands(build_parser()))


@pytest.mark.parametrize("command", list(SUBCOMMANDS))
def test_every_option_of_every_subcommand_has_help(command: str):
    missing = []
    for action in SUBCOMMANDS[command]._actions:
        if isinstance(action, argparse._SubParsersAction):  # the help of each subcommand
            missing += [c.dest for c in action._choices_actions if not (c.help or "").strip()]
        elif not (action.help or "").strip():
            missing.append("/".join(action.option_strings) or action.dest)
    assert not missing, f"{command}: no help for {missing}"


@pytest.mark.parametrize("command", ["genrec train-offline", "genrec evaluate"])
def test_offline_options_show_their_defaults(command: str):
    parser = SUBCOMMANDS[command]
    for action in parser._actions:
        if action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            continue
        assert "%(default)" in action.help, f"{command} {action.option_strings}: no default"
    text = parser.format_help()
    assert "(default: 0.001)" in text or command == "genrec evaluate"
    assert "(default: 256)" in text


def test_progress_is_capped_at_100_percent():
    snapshot = {
        "events_seen": 20_224,  # 79 records of 256: the bound stops at a record boundary
        "run_events": 20_224,
        "events_per_s": 1000.0,
        "targets": 19_000,
        "loss": 1.5,
        "window": {"ndcg@10": 0.1},
        "rejected": {},
        "store_users": 500,
        "vocab_size": 900,
    }
    line = progress_line(snapshot, total=20_000)
    assert " 100% " in line and "101%" not in line
    assert "ETA 0:00:00" in line
    assert " 50% " in progress_line({**snapshot, "run_events": 10_000}, total=20_000)


def test_docs_state_the_real_metrics_port():
    port = ObservabilitySection().prometheus_port
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        assert "9100" not in path.read_text(), f"{path}: metrics port is {port}, not 9100"
    assert f"127.0.0.1:{port}/metrics" in (REPO / "README.md").read_text()


def architecture_tree_paths(block: str) -> list[str]:
    """The paths of docs/architecture.md's tree: two spaces of indent per folder level, then
    one or more names (``x.py``, ``folder/``) and a description; a line indented to the
    description column continues the line above."""
    paths: list[str] = []
    folders: list[str] = []
    for line in block.strip().splitlines():
        indent = len(line) - len(line.lstrip())
        if indent >= 20:  # a wrapped description
            continue
        depth = indent // 2
        names = []
        for token in line.split():
            if not (token.endswith("/") or token.endswith(".py")):
                break
            names.append(token)
        assert names, f"docs/architecture.md: no path at the start of {line!r}"
        del folders[depth:]
        paths += ["".join(folders) + name for name in names]
        if names[-1].endswith("/"):
            folders.append(names[-1])
    return paths


def test_architecture_layout_lists_only_paths_that_exist():
    text = (REPO / "docs" / "architecture.md").read_text()
    paths = architecture_tree_paths(text.split("```")[1])
    assert "pipeline/events/records.py" in paths and "pipeline/stream/step.py" in paths
    for path in paths:
        assert (REPO / path).exists(), f"docs/architecture.md lists {path}, which does not exist"
