"""The leaderboard's training rule (why a training ended, whether its row converged), the tables that
show it, and the time estimate before models run. Nothing here trains."""

import json

import pandas as pd
import pytest
from conftest import DATA_DIR

from recbole_llmsrec import leaderboard
from recbole_llmsrec.leaderboard import (
    COLUMNS, convergence_notes, converged_label, replay_early_stopping, run_models, stopping_reason,
    training_outcome, write_leaderboard,
)


def validations(*bests, per_epoch=1, stage=None):
    """A validation history: ``bests`` in order, ``per_epoch`` validations per epoch."""
    return [{"epoch": (i + 1) / per_epoch, "best": best, **({"stage": stage} if stage else {})}
            for i, best in enumerate(bests)]


# ---- why a training ended -----------------------------------------------------------------------


def test_early_stopping_needs_stopping_step_plus_one_validations_without_a_new_best():
    # RecBole stops once cur_step > stopping_step: a best, then 3 validations that bring none
    history = validations(True, True, False, False, False)
    assert stopping_reason(history, stopping_step=2) == "early stopping"
    outcome = training_outcome(history, stopping_step=2)
    assert outcome == {"best_epoch": 2.0, "validations": 5, "stopped_by": "early stopping", "converged": True}
    assert converged_label(outcome) == "yes"


def test_running_out_of_epochs_within_the_patience_window_is_not_converged():
    for history in (validations(True, True, False, False, False), validations(True, True, True)):
        assert stopping_reason(history, stopping_step=3) == "max epochs"
        outcome = training_outcome(history, stopping_step=3)
        assert not outcome["converged"] and converged_label(outcome) == "no: max epochs"
    # the trainer's own count wins: it includes validations before a resumed run
    assert stopping_reason(validations(True, False), stopping_step=3, cur_step=4) == "early stopping"


def test_fractional_validations_count_as_validations():
    # valid_per_epoch 4: the best after a quarter of epoch 2, then 4 validations without a new best
    history = validations(True, True, True, True, True, False, False, False, False, per_epoch=4)
    outcome = training_outcome(history, stopping_step=3)
    assert outcome["best_epoch"] == 1.25 and outcome["validations"] == 9
    assert outcome["stopped_by"] == "early stopping"
    assert stopping_reason(history, stopping_step=4) == "max epochs"


def test_training_free_and_no_validation():
    outcome = training_outcome(validations(True), stopping_step=5, trained=False)
    assert outcome["stopped_by"] == "training-free" and outcome["converged"] and outcome["best_epoch"] is None
    assert converged_label(outcome) == "training-free"
    outcome = training_outcome([], stopping_step=5)
    assert outcome == {"best_epoch": None, "validations": 0, "stopped_by": "no validation", "converged": False}
    assert converged_label(outcome) == "no: no validation"
    assert converged_label(None) == converged_label({}) == "unknown"  # a record written before the rule


def test_a_staged_model_converged_only_if_every_trained_stage_stopped_early():
    history = validations(True, False, False, stage="stage1") + validations(True, True, stage="stage2")
    outcome = training_outcome(history, stopping_step=1, stages={"stage1": False, "stage2": False})
    assert outcome["stopped_by"] == {"stage1": "early stopping", "stage2": "max epochs"}
    assert outcome["best_epoch"] == {"stage1": 1.0, "stage2": 2.0} and outcome["validations"] == {"stage1": 3, "stage2": 2}
    assert not outcome["converged"] and converged_label(outcome) == "no: max epochs in stage2"
    # a stage loaded from a checkpoint is taken as given
    loaded = training_outcome(validations(True, False, False, stage="mapping"), stopping_step=1,
                              stages={"lora": True, "mapping": False})
    assert loaded["stopped_by"] == {"lora": "loaded from checkpoint", "mapping": "early stopping"}
    assert loaded["converged"] and converged_label(loaded) == "yes"


def test_replayed_early_stopping_marks_each_new_best():
    # RecBole's rule: a score equal to the best is a new best; lower is not (valid_metric_bigger)
    history = replay_early_stopping([(1, 0.2), (2, 0.3), (3, 0.3), (4, 0.1), (5, 0.25)], float("-inf"), 0,
                                    stopping_step=5)
    assert [entry["best"] for entry in history] == [True, True, True, False, False]
    assert [entry["epoch"] for entry in history] == [1.0, 2.0, 3.0, 4.0, 5.0]
    # resumed: the best so far came before this run
    assert not any(entry["best"] for entry in replay_early_stopping([(6, 0.1)], 0.3, 2, stopping_step=5))
    smaller = replay_early_stopping([(1, 2.0), (2, 1.0)], float("inf"), 0, stopping_step=5, bigger=False)
    assert [entry["best"] for entry in smaller] == [True, True]


# ---- the tables ---------------------------------------------------------------------------------


def fake_record(model, training=None, ndcg=0.1):
    metrics = {"ndcg@10": ndcg, "hit@10": 2 * ndcg, "ndcg@20": ndcg, "hit@20": 2 * ndcg}
    group = {"users": 10, "item_interactions": [1, 5], **metrics}
    record = {"model": model, "dataset": "tiny", "results": {"uni100": metrics, "full": metrics},
              "warm_cold": {mode: {"warm": group, "cold": group} for mode in ("uni100", "full")},
              "train_seconds": 12.0, "setup_seconds": 1.0, "eval_seconds": {"uni100": 1.0, "full": 1.0},
              "epochs_run": 3, "trainable_params": 10, "train_seconds_per_epoch_all": [], "valid_seconds_all": []}
    if training:
        record["training"] = training
    return record


def test_the_tables_show_best_epoch_and_converged(tmp_path):
    rule = {"stopping_step": 2, "valid_per_epoch": 1, "eval_step": 1}
    records = [
        fake_record("SASRec", {**rule, "epochs_max": 50, "epochs_run": 10, "learning_rate": 0.001,
                               **training_outcome(validations(*[True] * 7 + [False] * 3), 2)}, ndcg=0.4),
        fake_record("LLaRA", {**rule, "valid_per_epoch": 2, "epochs_max": 2, "epochs_run": 2, "learning_rate": 0.001,
                              **training_outcome(validations(True, True, True, False, per_epoch=2), 2)}),
        fake_record("ALLMRec", {**rule, "epochs_max": {"stage1": 10, "stage2": 3},
                                "epochs_run": {"stage1": 4, "stage2": 3},
                                "learning_rate": {"stage1": 0.001, "stage2": 0.0001},
                                **training_outcome(validations(True, False, False, False, stage="stage1")
                                                   + validations(True, True, True, stage="stage2"), 2,
                                                   stages={"stage1": False, "stage2": False})}),
        fake_record("LLMSeqSim", {**rule, "epochs_max": 0, "epochs_run": 0, "learning_rate": None,
                                  **training_outcome(validations(True), 2, trained=False)}),
        fake_record("BERT4Rec"),  # written before the training rule was kept
    ]
    write_leaderboard(records, str(tmp_path), "# tiny")

    table = pd.read_csv(tmp_path / "leaderboard.csv", dtype={"best_epoch": str}, keep_default_na=False)
    assert list(table.columns) == COLUMNS and "converged" in COLUMNS and "best_epoch" in COLUMNS
    shown = table[table["eval_mode"] == "uni100"].set_index("model")
    assert shown["converged"].to_dict() == {
        "SASRec": "yes", "LLaRA": "no: max epochs", "ALLMRec": "no: max epochs in stage2",
        "LLMSeqSim": "training-free", "BERT4Rec": "unknown"}
    assert shown["best_epoch"].to_dict() == {
        "SASRec": "7", "LLaRA": "1.5", "ALLMRec": "stage1 1, stage2 3", "LLMSeqSim": "", "BERT4Rec": ""}

    markdown = (tmp_path / "leaderboard.md").read_text()
    assert "converged" in markdown.split("### full")[1].splitlines()[2]  # a column of both tables
    notes = markdown.rsplit("### full", 1)[1]
    assert "- LLaRA did not converge: max epochs, 2 of at most 2 epochs, best validation at epoch 1.5" in notes
    assert "- ALLMRec did not converge: stage2: max epochs, 3 of at most 3 epochs, best validation at epoch 3" in notes
    assert "SASRec did not converge" not in notes and "LLMSeqSim did not converge" not in notes
    assert "converged unknown" in notes and notes.rstrip().endswith("BERT4Rec")
    assert "\n" not in convergence_notes(records[:1])  # only the rule when every row converged


# ---- the estimate before models run, and the progress after each --------------------------------


def test_run_models_estimates_from_the_latest_earlier_record(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "results" / "tiny" / "runs"
    runs.mkdir(parents=True)
    earlier = {"model": "SASRec", "dataset": "tiny", "date": "2020-01-02 00:00 UTC", "epochs_run": 3,
               "train_seconds": 50.0, "train_seconds_per_epoch_all": [10.0, 12.0, 11.0],
               "valid_seconds_all": [2.0, 4.0, 2.0], "setup_seconds": 3.0, "eval_seconds": {"uni100": 1.0, "full": 1.0}}
    (runs / "SASRec-000000000000.json").write_text(json.dumps(earlier))  # other settings: still measures SASRec
    older = {**earlier, "date": "2019-01-01 00:00 UTC", "train_seconds_per_epoch_all": [1000.0]}
    (runs / "SASRec-111111111111.json").write_text(json.dumps(older))
    (runs / "SASRec-222222222222.json").write_text(json.dumps({**earlier, "dataset": "other", "date": "2021-01-01"}))

    def fake_run(model_name, config_dict, shuffle_scopes, path):
        record = {"model": model_name, "dataset": "tiny", "date": "2030-01-01 00:00 UTC", "epochs_run": 5,
                  "train_seconds": 10.0, "train_seconds_per_epoch_all": [1.0] * 5, "valid_seconds_all": [1.0] * 5,
                  "setup_seconds": 0.0, "eval_seconds": {}, "results": {"uni100": {"ndcg@10": 0.5}, "full": None},
                  "full_error": "no full ranking here",
                  "training": {"stopped_by": "max epochs", "converged": False}}
        with open(path, "w") as f:
            json.dump(record, f)
        return record

    monkeypatch.setattr(leaderboard, "run_in_process", fake_run)
    common = {"dataset": "tiny", "data_path": DATA_DIR, "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
              "epochs": 5, "eval_step": 1, "show_progress": False}
    messages = []
    run_models(["SASRec", "BERT4Rec"], common, results_dir=str(tmp_path / "results"), log=messages.append)
    # 5 epochs at the median 11 s, 5 validations at the median 2 s, 3 s setup and 2 s test: 70 s
    assert messages[0] == ("[1/2] SASRec: at most about 70 s (up to 5 epochs of 11 s, 5 validations of 2.0 s; "
                           "setup and test 5.0 s (as its run of 2020-01-02 00:00 UTC))")
    assert messages[1] == "[2/2] BERT4Rec: no earlier run to estimate from"
    assert messages[2].startswith("estimated: at most about 70 s for 2 models to run (1 of them with no estimate)")
    done = [m for m in messages if ": done in " in m]
    assert len(done) == 2 and "converged: no: max epochs" in done[0]
    assert done[0].endswith("; 1 model left, with no estimate") and done[1].endswith("; no models left")

    # the same command again: both finished before, nothing to estimate; --rerun measures the newest record
    messages.clear()
    run_models(["SASRec", "BERT4Rec"], common, results_dir=str(tmp_path / "results"), log=messages.append)
    assert len(messages) == 2 and all("finished before with the same settings" in m for m in messages)
    messages.clear()
    run_models(["SASRec", "BERT4Rec"], common, results_dir=str(tmp_path / "results"), rerun=["SASRec"],
               log=messages.append)
    assert messages[0].startswith("[1/2] SASRec: at most about 10 s (up to 5 epochs of 1.0 s")
    assert messages[1] == "estimated: at most about 10 s for 1 model to run; 1 finished before; " \
                          "early stopping usually ends training sooner"


@pytest.mark.parametrize("model_name,expected", [("LLMSeqSim", "1 validation of 3.0 s"), ("Pop", "up to 1 epoch of 2.0 s")])
def test_the_estimate_of_models_with_nothing_to_train(model_name, expected):
    from recbole_llmsrec.config import Config

    config = Config(model=model_name, config_dict={"dataset": "tiny", "data_path": DATA_DIR, "epochs": 50})
    earlier = {"train_seconds_per_epoch_all": [2.0], "valid_seconds_all": [3.0], "setup_seconds": 1.0,
               "eval_seconds": {"uni100": 1.0}, "date": "2020-01-01 00:00 UTC"}
    seconds, how = leaderboard.estimate_seconds(config, earlier)
    assert how.startswith(expected)
    assert seconds == pytest.approx(3.0 + 2.0 if model_name == "LLMSeqSim" else 2.0 + 3.0 + 2.0)
