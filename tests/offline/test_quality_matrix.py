"""bench/quality_matrix.py: one table over several data sets, beside the reference's figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import quality_matrix
from pipeline.lake.synthetic import SyntheticConfig, generate_events

TINY = ["--epochs", "1", "--embedding-dim", "8", "--max-len", "20", "--num-negatives", "8"]


def write_log(path: Path, seed: int) -> Path:
    log = generate_events(
        SyntheticConfig(num_users=40, num_items=60, events_per_user=8, num_clusters=4, seed=seed)
    )
    rows = zip(log.user.tolist(), log.item.tolist(), log.timestamp.tolist(), strict=True)
    path.write_text("user,item,timestamp\n" + "".join(f"{u},{i},{t}\n" for u, i, t in rows))
    return path


def peer_result(path: Path, all_items: float, exclude_seen: float, out_json: bool = False) -> Path:
    """peer-gr.sh's output (log lines, the result as the last line) or its indented out.json."""
    final = {"ndcg@10": exclude_seen, "ndcg@10_nf": all_items, "epoch": 30}
    result = {"wall_s": 1.0, "final_epoch": final}
    text = json.dumps(result, indent=1) if out_json else "log line\n" + json.dumps(result)
    path.write_text(text + "\n")
    return path


def test_every_set_model_and_protocol_is_a_row_beside_its_reference(tmp_path, capsys) -> None:
    a, b = write_log(tmp_path / "a.csv", 0), write_log(tmp_path / "b.csv", 1)
    peer = peer_result(tmp_path / "peer.json", all_items=0.05, exclude_seen=0.08)
    argv = ["--set", f"a={a}", "--set", f"b={b}", "--peer", f"b:hstu={peer}"]
    assert quality_matrix.main([*argv, "--models", "hstu,popular", "--seeds", "0,1", *TINY]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = {(r["set"], r["model"], r["protocol"]): r for r in out["table"]}
    assert len(rows) == len(out["table"]) == 2 * 2 * 2
    for (name, model, protocol), row in rows.items():
        summary = out["sets"][name]["summary"][model][protocol]["ndcg@10"]
        assert row["ndcg@10"] == summary["mean"] and row["seeds"] == 2
        assert (row["reference"] is None) == ((name, model) != ("b", "hstu"))
    ref = rows[("b", "hstu", "exclude-seen")]
    assert ref["reference"] == 0.08 and ref["ratio"] == pytest.approx(ref["ndcg@10"] / 0.08)
    assert ref["reference_epochs"] == [30] and ref["reference_stopped_by_time_budget"] is False
    assert rows[("b", "hstu", "all-items")]["reference"] == 0.05
    assert out["sets"]["a"]["data"] != out["sets"]["b"]["data"]  # each set read its own file
    assert out["gaps"] == []  # no set ran both HSTU and SASRec


def fake_result(by_model: dict[str, list[float]]) -> dict:
    """An offline_quality result whose every protocol has these per-seed NDCG@10 values."""
    runs, summary = [], {}
    for model, values in by_model.items():
        protocols = {}
        for protocol in quality_matrix.offline_quality.PROTOCOLS:
            mean = sum(values) / len(values)
            # offline_quality records a std of 0 for one seed
            std = (sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1)) ** 0.5
            protocols[protocol] = {"ndcg@10": {"mean": mean, "std": std}}
        summary[model] = protocols
        runs += [
            {
                "model": model,
                "seed": seed,
                "all-items": {"ndcg@10": v},
                "exclude-seen": {"ndcg@10": v},
            }
            for seed, v in enumerate(values)
        ]
    return {"runs": runs, "summary": summary}


def test_hstu_is_above_sasrec_beyond_the_seed_spread_only_when_the_means_differ_by_more() -> None:
    steady = fake_result({"hstu": [0.036, 0.030, 0.034], "sasrec": [0.033, 0.027, 0.032]})
    clear = fake_result({"hstu": [0.040, 0.041, 0.039], "sasrec": [0.030, 0.031, 0.032]})
    gaps = quality_matrix.model_gaps(
        {"steady": steady, "clear": clear, "one": fake_result({"hstu": [0.1, 0.2]})}
    )
    by_set = {(g["set"], g["protocol"]): g for g in gaps}
    assert len(gaps) == 4  # "one" has no SASRec runs
    s = by_set[("steady", "all-items")]
    # above on every seed, but by 0.0027 on average against SASRec's seed std of 0.0032
    assert s["per_seed"] == pytest.approx([0.003, 0.003, 0.002]) and s["above_every_seed"]
    assert s["difference"] == pytest.approx(0.0026667, abs=1e-6) and not s["beyond_spread"]
    lone = quality_matrix.model_gaps({"lone": fake_result({"hstu": [0.04], "sasrec": [0.01]})})
    assert lone[0]["per_seed"] == pytest.approx([0.03]) and lone[0]["beyond_spread"] is None
    c = by_set[("clear", "exclude-seen")]
    assert (
        c["beyond_spread"] and c["difference"] == pytest.approx(0.009) and c["seeds"] == [0, 1, 2]
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--peer", "nope:hstu=PEER"], "no --set or --runs of that name"),
        (["--peer", "a:hstu"], "expected NAME=VALUE"),
        (["--set", "a=elsewhere"], "given twice"),
        (["--peer", "a:hstu=BAD"], "no peer-gr.sh result"),
        (["--peer", "a:hstu=TEXT"], "ndcg@10 is 'abc', not a finite number"),
        (["--peer", "a:hstu=NAN"], "ndcg@10_nf is nan, not a finite number"),
    ],
)
def test_bad_flags_stop_before_any_training(tmp_path, flags, message) -> None:
    peer = peer_result(tmp_path / "peer.json", 0.05, 0.08)
    bad = {
        "BAD": '{"final_epoch": {"ndcg@10": 0.1}}',
        "TEXT": '{"final_epoch": {"ndcg@10": "abc", "ndcg@10_nf": 0.1}}',
        "NAN": '{"final_epoch": {"ndcg@10": 0.1, "ndcg@10_nf": NaN}}',
    }
    for name, text in bad.items():
        (tmp_path / f"{name}.json").write_text(text + "\n")
    paths = {"PEER": str(peer)} | {name: str(tmp_path / f"{name}.json") for name in bad}
    named = [flag.rpartition("=") for flag in flags]
    flags = [
        f"{key}={paths[value]}" if value in paths else key + eq + value for key, eq, value in named
    ]
    with pytest.raises(SystemExit, match=message):
        quality_matrix.main(["--set", f"a={tmp_path / 'missing.csv'}", *flags])


def test_runs_done_apart_pool_into_the_same_row_as_one_run(tmp_path, capsys) -> None:
    log = write_log(tmp_path / "a.csv", 0)
    flags = ["--models", "hstu", *TINY]
    assert quality_matrix.main(["--set", f"a={log}", "--seeds", "0,1", *flags]) == 0
    together = json.loads(capsys.readouterr().out)
    files = []
    for seed in (0, 1):
        assert quality_matrix.main(["--set", f"a={log}", "--seeds", str(seed), *flags]) == 0
        files.append(tmp_path / f"seed{seed}.json")
        files[-1].write_text(json.dumps(json.loads(capsys.readouterr().out)["sets"]["a"]))
    peer = peer_result(tmp_path / "peer.json", all_items=0.05, exclude_seen=0.08)
    peer2 = peer_result(tmp_path / "out.json", all_items=0.07, exclude_seen=0.10, out_json=True)
    runs = ",".join(map(str, files))
    assert quality_matrix.main(["--runs", f"a={runs}", "--peer", f"a:hstu={peer},{peer2}"]) == 0
    apart = json.loads(capsys.readouterr().out)
    by_protocol = {r["protocol"]: r for r in apart["table"]}
    assert by_protocol["all-items"]["reference"] == pytest.approx(0.06)
    assert by_protocol["exclude-seen"]["reference_runs"] == [0.08, 0.10]
    assert [r["seed"] for r in apart["sets"]["a"]["runs"]] == [0, 1]
    for row, same in zip(apart["table"], together["table"], strict=True):
        assert row["seeds"] == 2 and row["ndcg@10"] == pytest.approx(same["ndcg@10"])
        assert row["ci95"] == pytest.approx(same["ci95"]) and row["reference"] is not None


def test_pooled_runs_must_share_data_and_settings(tmp_path, capsys) -> None:
    log = write_log(tmp_path / "a.csv", 0)
    outputs = {}
    for name, extra in {
        "s0": ["--seeds", "0"],
        "s1": ["--seeds", "1"],
        "lr": ["--lr", "0.01"],
    }.items():
        assert quality_matrix.main(["--set", f"a={log}", "--models", "hstu", *TINY, *extra]) == 0
        outputs[name] = tmp_path / f"{name}.json"
        outputs[name].write_text(json.dumps(json.loads(capsys.readouterr().out)["sets"]["a"]))
    (tmp_path / "junk.json").write_text("not json")
    (tmp_path / "no-runs.json").write_text('{"benchmark": "offline_quality", "settings": {}}')
    truncated = json.loads(outputs["s1"].read_text())
    del truncated["runs"][0]["exclude-seen"]
    (tmp_path / "truncated.json").write_text(json.dumps(truncated))
    forged = {
        "text-metric": lambda run: run["all-items"].update({"ndcg@10": "0.5"}),
        "nan-metric": lambda run: run["exclude-seen"].update({"mrr": float("nan")}),
        "list-model": lambda run: run.update({"model": ["hstu"]}),
        "text-seed": lambda run: run.update({"seed": "1"}),
    }
    for name, forge in forged.items():
        result = json.loads(outputs["s1"].read_text())
        forge(result["runs"][0])
        (tmp_path / f"{name}.json").write_text(json.dumps(result))
    # a file written before a setting existed: the setting counts at its default
    older = json.loads(outputs["s1"].read_text())
    del older["settings"]["train_fraction"], older["settings"]["task"]
    (tmp_path / "older.json").write_text(json.dumps(older))
    assert quality_matrix.main(["--runs", f"a={outputs['s0']},{tmp_path / 'older.json'}"]) == 0
    assert json.loads(capsys.readouterr().out)["table"][0]["seeds"] == 2
    # ... unless adding it changed the default: a file from before tail averaging kept the
    # last epoch's weights, unlike today's defaults
    before_average = older | {"settings": dict(older["settings"])}
    del before_average["settings"]["tail_average"]
    (tmp_path / "before-average.json").write_text(json.dumps(before_average))
    # a file written while flags since removed existed: off, they were today's behaviour
    removed = {"weight_average": "none", "ema_decay": 0.95, "lr_schedule": "constant"}
    (tmp_path / "removed.json").write_text(
        json.dumps(older | {"settings": older["settings"] | removed})
    )
    assert quality_matrix.main(["--runs", f"a={outputs['s0']},{tmp_path / 'removed.json'}"]) == 0
    assert json.loads(capsys.readouterr().out)["table"][0]["seeds"] == 2
    cosine = older | {"settings": older["settings"] | removed | {"lr_schedule": "cosine"}}
    (tmp_path / "cosine.json").write_text(json.dumps(cosine))
    del older["settings"]["epochs"]  # not at its default in these runs
    (tmp_path / "older-epochs.json").write_text(json.dumps(older))
    cases = [
        (f"{outputs['s0']},{outputs['lr']}", "trained with lr=0.01"),
        (f"{outputs['s0']},{tmp_path / 'before-average.json'}", "trained with tail_average=0.0"),
        (f"{outputs['s0']},{tmp_path / 'older-epochs.json'}", "trained with epochs=30"),
        (f"{outputs['s0']},{tmp_path / 'cosine.json'}", "trained with lr_schedule='cosine'"),
        (f"{outputs['s0']},{outputs['s0']}", "hstu seed 0 is given twice"),
        (f"{outputs['s1']},{tmp_path / 'junk.json'}", "not an offline_quality.py output"),
        (str(tmp_path / "missing.json"), "not an offline_quality.py output"),
        (str(tmp_path / "no-runs.json"), "not an offline_quality.py output"),
        (str(tmp_path / "truncated.json"), "hstu seed 1 has no exclude-seen metrics"),
        (str(tmp_path / "text-metric.json"), "all-items ndcg@10 is '0.5', not a finite number"),
        (str(tmp_path / "nan-metric.json"), "exclude-seen mrr is nan, not a finite number"),
        (
            str(tmp_path / "list-model.json"),
            r"without a model name and an integer seed \(\['hstu'\]",
        ),
        (str(tmp_path / "text-seed.json"), r"integer seed \('hstu', '1'\)"),
    ]
    for files, message in cases:
        with pytest.raises(SystemExit, match=message):
            quality_matrix.main(["--runs", f"a={files}"])
    with pytest.raises(SystemExit, match="both name 'a'"):
        quality_matrix.main(["--runs", f"a={outputs['s0']}", "--set", f"a={log}"])
    with pytest.raises(SystemExit, match="at least one data set"):
        quality_matrix.main([])
