"""The leaderboard: one run per model in its own process, both evaluation modes, resume, outputs."""

import json
import os
import shutil

import pandas as pd
import pytest

from recbole_llmsrec.leaderboard import COLUMNS, config_flags, leaderboard_main, run_settings, stopping_reason


def tiny_flags(tiny_config_dict, tiny_encoder_path):
    return [
        "--dataset=tiny", f"--data_path={tiny_config_dict['data_path']}",
        "--load_col={inter: [user_id, item_id, timestamp], item: [item_id, title]}", "--item_text_fields=[title]",
        "--MAX_ITEM_LIST_LENGTH=20", "--epochs=2", "--hidden_size=16", "--inner_size=16", "--n_layers=1",
        "--n_heads=1", "--state=WARNING", "--show_progress=False", "--eval_batch_size=400",
        f"--checkpoint_dir={tiny_config_dict['checkpoint_dir']}", f"--text_encoder_path={tiny_encoder_path}",
    ]


def test_leaderboard_runs_every_model_once_and_resumes(tiny_config_dict, tiny_encoder_path, tmp_path, capsys):
    argv = tiny_flags(tiny_config_dict, tiny_encoder_path) + [
        "--models=SASRec,LLMSeqSim", '--model_config={"LLMSeqSim": {"llmseqsim_dim": 8}}',
        f"--results_dir={tmp_path / 'results'}", "--shuffle_scopes=prompt_window"]
    leaderboard_main(argv)
    folder = tmp_path / "results" / "tiny"
    assert capsys.readouterr().out.count("no earlier run to estimate from") == 2

    table = pd.read_csv(folder / "leaderboard.csv")
    assert list(table.columns) == COLUMNS
    assert list(zip(table["model"], table["eval_mode"])) == [
        (m, mode) for m in ("SASRec", "LLMSeqSim") for mode in ("uni100", "full")]
    for metric in COLUMNS[2:6]:
        assert table[metric].between(0, 1).all()
    # 1 positive among 100 candidates is an easier task than among all 150 items
    by = table.set_index(["model", "eval_mode"])
    assert (by.xs("uni100", level=1)["hit@10"] >= by.xs("full", level=1)["hit@10"]).all()
    params = dict(zip(table["model"], table["trainable_params"]))
    assert params["LLMSeqSim"] == 0 and params["SASRec"] > 0
    # 2 epochs are within SASRec's patience: it ran out of epochs, so its row is not converged
    assert dict(zip(table["model"], table["converged"])) == {"SASRec": "no: max epochs", "LLMSeqSim": "training-free"}
    markdown = (folder / "leaderboard.md").read_text()
    assert "- SASRec did not converge: max epochs, 2 of at most 2 epochs, best validation at epoch" in markdown
    assert (folder / "leaderboard.png").stat().st_size > 0 and "### uni100" in markdown
    assert "uni100: the target among 100 sampled negatives (101 candidates); no negative is an item of the user's history" in markdown

    warm = pd.read_csv(folder / "warm_cold.csv")
    assert set(warm["group"]) == {"warm", "cold"} and len(warm) == 2 * 2 * 2
    shuffle = pd.read_csv(folder / "shuffle.csv")
    assert len(shuffle) == 2 * 2 and set(shuffle["scope"]) == {"prompt_window"}
    uni100 = shuffle[shuffle["eval_mode"] == "uni100"].set_index("model")
    assert (uni100["cos user_vec"].between(0, 1 + 1e-6)).all() and uni100["cos h_U"].isna().all()  # no LLM state: n/a

    # every model ranked the same uni100 candidates for the same users
    records = {path: json.loads((folder / "runs" / path).read_text()) for path in os.listdir(folder / "runs")
               if not path.endswith(".settings.json")}
    assert len(records) == 2 and len({json.dumps(r["users"]) for r in records.values()}) == 1
    assert all(r["candidates"] == {"mode": "uni100", "negatives": 100, "candidates": 101, "negatives_exclude": "history"}
               for r in records.values())
    # cost per epoch and per validation pass; LLMSeqSim trains nothing and validates once
    by_model = {r["model"]: r for r in records.values()}
    sasrec = by_model["SASRec"]
    assert sasrec["epochs_run"] == len(sasrec["train_seconds_per_epoch_all"]) == tiny_config_dict["epochs"]
    assert len(sasrec["valid_seconds_all"]) == sasrec["epochs_run"] and sasrec["peak_rss_mb"] > 0
    assert 0 < sum(sasrec["train_seconds_per_epoch_all"]) + sum(sasrec["valid_seconds_all"]) <= sasrec["train_seconds"]
    assert by_model["LLMSeqSim"]["train_seconds_per_epoch_all"] == []
    # the rule that trained each, from RecBole's trainer (SASRec) and a training-free one
    rule = sasrec["training"]
    assert {key: rule[key] for key in ("epochs_max", "epochs_run", "validations", "eval_step", "valid_per_epoch")} == {
        "epochs_max": 2, "epochs_run": 2, "validations": 2, "eval_step": 1, "valid_per_epoch": 1}
    assert rule["stopped_by"] == stopping_reason(sasrec["valid_history"], rule["stopping_step"]) == "max epochs"
    assert rule["best_epoch"] in (1.0, 2.0) and rule["learning_rate"] > 0 and not rule["converged"]
    assert by_model["LLMSeqSim"]["training"]["stopped_by"] == "training-free"
    assert by_model["LLMSeqSim"]["training"]["epochs_max"] == 0 and by_model["LLMSeqSim"]["training"]["converged"]
    assert not os.path.isabs(sasrec["checkpoint"]) and os.path.isfile(sasrec["checkpoint"])
    mtimes = {path: os.path.getmtime(folder / "runs" / path) for path in records}

    # the same call again trains nothing; a changed setting or --rerun trains that model again
    capsys.readouterr()
    leaderboard_main(argv)
    assert capsys.readouterr().out.count("finished before with the same settings") == 2
    assert mtimes == {path: os.path.getmtime(folder / "runs" / path) for path in records}
    leaderboard_main(argv + ["--models=SASRec", "--rerun=SASRec"])
    assert "[1/1] SASRec: at most about" in capsys.readouterr().out  # estimated from its first run
    sasrec = next(p for p in records if p.startswith("SASRec"))
    assert os.path.getmtime(folder / "runs" / sasrec) > mtimes[sasrec]

    # a model that fails is reported, the run exits non-zero, and the others are kept
    failing = argv + ["--models=LLMSeqSim,SASRec", '--model_config={"LLMSeqSim": {"llmseqsim_dim": 256}}']
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:  # PCA to 256 dimensions of 150 items fails
        leaderboard_main(failing)
    assert exit_info.value.code == 1 and "failed: LLMSeqSim" in capsys.readouterr().out
    assert set(pd.read_csv(folder / "leaderboard.csv")["model"]) == {"SASRec"}


def test_run_key_follows_the_settings_and_the_data(tiny_config_dict, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_config_dict["data_path"], data)
    base = {"dataset": "tiny", "data_path": str(data), "load_col": tiny_config_dict["load_col"]}
    _, settings, key = run_settings("SASRec", base)
    assert settings["hidden_size"] == 64 and settings["MAX_ITEM_LIST_LENGTH"] == 50  # RecBole's and the YAML's defaults
    assert run_settings("SASRec", {**base, "show_progress": False, "checkpoint_dir": "elsewhere"})[2] == key
    assert run_settings("SASRec", {**base, "hidden_size": 32})[2] != key
    assert run_settings("BERT4Rec", base)[2] != key
    assert run_settings("SASRec", base, shuffle_scopes=("full_sequence",))[2] != key  # the diagnostic asked for
    with open(data / "tiny" / "tiny.inter", "a") as f:
        f.write("1\t150\t892000000\n")
    assert run_settings("SASRec", base)[2] != key
    with pytest.raises(FileNotFoundError, match="fetch_ml1m"):
        run_settings("SASRec", {**base, "dataset": "ml-1m", "data_path": str(tmp_path / "nowhere")})


def test_config_flags_read_yaml_values():
    assert config_flags(["--epochs=3", "--eval_args={mode: {valid: full}}", "--llm_path=a/b"]) == {
        "epochs": 3, "eval_args": {"mode": {"valid": "full"}}, "llm_path": "a/b"}
    with pytest.raises(ValueError, match="--key=value"):
        config_flags(["epochs"])
