"""Configuration defaults per run and error messages that say where a bad value came from."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.stream.config import ConfigError, load_config


def test_run_state_defaults_follow_the_source():
    def dirs(overrides: dict, environ: dict | None = None) -> tuple[str, str]:
        cfg = load_config(overrides=overrides, environ=environ or {})
        assert cfg.registry.uri == "./registry"  # shared by every run
        return cfg.checkpoint.dir, cfg.run_dir

    assert dirs({}) == ("./checkpoints/synthetic", "./runs/synthetic")
    file_source = {"source": {"kind": "file", "path": "data/ml 1m.dat"}}
    assert dirs(file_source) == ("./checkpoints/file-ml_1m", "./runs/file-ml_1m")
    kafka = {"source": {"kind": "kafka", "kafka": {"topic": "clicks, views"}}}
    assert dirs(kafka) == ("./checkpoints/kafka-clicks+views", "./runs/kafka-clicks+views")
    assert dirs({"source": {"kind": "kafka"}}) == (
        "./checkpoints/kafka-events",
        "./runs/kafka-events",
    )
    assert dirs({"run_name": "exp1", **kafka}) == ("./checkpoints/exp1", "./runs/exp1")
    assert dirs({}, {"GENREC_RUN_NAME": "exp2"}) == ("./checkpoints/exp2", "./runs/exp2")
    explicit = {"run_dir": "logs", "checkpoint": {"dir": "ckpt"}, **kafka}
    assert dirs(explicit) == ("ckpt", "logs")
    assert dirs({"run_dir": "logs"}) == ("./checkpoints/synthetic", "logs")
    cfg = load_config(overrides={"source": {"kind": "kafka"}}, environ={})
    assert cfg.dead_letter_path == Path("runs/kafka-events/deadletter.jsonl")


def test_run_name_must_be_a_directory_name():
    with pytest.raises(ConfigError, match=r"GENREC_RUN_NAME='a/b': 'a/b' is not a directory"):
        load_config(environ={"GENREC_RUN_NAME": "a/b"})


def test_malformed_yaml_is_one_line_with_file_line_and_column(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("train:\n  lr: 0.1\n bad: 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.lines == [
        f"{path}:3:2: expected <block end>, but found '<block mapping start>' "
        "(while parsing a block mapping at line 1)"
    ]


def test_a_missing_config_file_names_it(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read the config file"):
        load_config(tmp_path / "nope.yaml", environ={})


def test_yaml_typo_names_file_line_and_a_close_match(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("store:\n  max_len: 30\ntrain:\n  lrr: 0.1\n  lr: abc\ntrian:\n  seed: 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert sorted(info.value.lines) == sorted(
        [
            f"{path}:4: train.lrr: unknown key (did you mean train.lr?)",
            f"{path}:5: train.lr: Input should be a valid number, unable to parse string as a "
            "number (got 'abc')",
            f"{path}:6: trian: unknown key (did you mean train?)",
        ]
    )


def test_environment_errors_name_the_variable():
    env = {
        "GENREC_TRAIN__LR": "abc",
        "GENREC_TRAIN__SEEED": "1",
        "GENREC_STORE__MAX_LEN": "30",
        "GENREC_REGISTRY": "elsewhere",  # the registry command's variable: not a config key
    }
    with pytest.raises(ConfigError) as info:
        load_config(environ=env)
    assert sorted(info.value.lines) == [
        "GENREC_TRAIN__LR='abc': Input should be a valid number, unable to parse string as a "
        "number",
        "GENREC_TRAIN__SEEED='1': unknown key train.seeed (did you mean GENREC_TRAIN__SEED?)",
    ]
    with pytest.raises(ConfigError, match=r"^GENREC_TRAN__LR='1': unknown key tran \(did you "):
        load_config(environ={"GENREC_TRAN__LR": "1"})
    with pytest.raises(ConfigError, match=r"^GENREC_TRAIN__LR='\[1': the value is not valid YAML"):
        load_config(environ={"GENREC_TRAIN__LR": "[1"})


def test_cli_overrides_win_and_their_errors_say_so(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("train:\n  lr: abc\n")
    # the CLI value replaces the bad YAML one, so the file is fine
    assert load_config(path, {"train": {"lr": 0.5}}, environ={}).train.lr == 0.5
    with pytest.raises(ConfigError) as info:
        load_config(path, {"train": {"lr": -1.0}}, environ={"GENREC_TRAIN__LR": "abc"})
    assert info.value.lines == ["--set/flag: train.lr: Input should be greater than 0 (got -1.0)"]


def test_validation_errors_are_rewritten_without_pydantic_dump():
    with pytest.raises(ConfigError) as info:
        load_config(overrides={"source": {"kind": "kfk"}, "store": {"ttl_s": "x"}}, environ={})
    text = str(info.value)
    assert "validation error" not in text and "errors.pydantic.dev" not in text
    assert sorted(info.value.lines) == [
        "--set/flag: source.kind: Input should be 'synthetic', 'file' or 'kafka' (got 'kfk')",
        "--set/flag: store.ttl_s: Input should be a valid integer, unable to parse string as an "
        "integer (got 'x')",
    ]
    # a check across keys: its own message, without pydantic's "Value error, " prefix
    with pytest.raises(ConfigError) as info:
        load_config(overrides={"source": {"kind": "file"}}, environ={})
    assert info.value.lines == ["source.kind=file needs source.path (--path FILE)"]


def test_the_synthetic_action_stream_is_a_run_of_its_own():
    from pipeline.commands.train import make_source
    from pipeline.lake.synthetic_actions import ActionStreamConfig

    overrides = {"source": {"synthetic": {"actions": True, "num_users": 7, "seed": 2}}}
    cfg = load_config(overrides=overrides, environ={})
    assert (cfg.checkpoint.dir, cfg.run_dir) == (
        "./checkpoints/synthetic-actions",
        "./runs/synthetic-actions",
    )
    source = make_source(cfg)
    assert source.cfg == ActionStreamConfig(num_users=7, num_items=1000, events_per_user=60, seed=2)
    drifting = {"source": {"synthetic": {"actions": True, "drift_at": 0.5}}}
    with pytest.raises(ConfigError, match="item-sequence generator only"):
        load_config(overrides=drifting, environ={})
