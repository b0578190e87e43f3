"""Shuffled histories, per-user metrics, warm/cold items and the sequence-understanding diagnostic."""

import csv
import json
import os

import numpy as np
import pandas as pd
import pytest
import torch
from recbole.data import data_preparation
from recbole.utils import init_seed

from recbole_llmsrec.config import Config
from recbole_llmsrec.data import create_dataset
from recbole_llmsrec.data.shuffle import shuffle_histories
from recbole_llmsrec.evaluation.popularity import metrics_by_group, popularity_groups, training_item_counts
from recbole_llmsrec.evaluation.ranking import evaluate_per_user, fixed_batches, full_sort_loader
from recbole_llmsrec.evaluation.shuffle import (
    HistoryShuffler,
    diagnose_checkpoint,
    shuffle_diagnostic,
    user_representations,
    write_shuffle_report,
)
from recbole_llmsrec.llm.text import history_windows
from recbole_llmsrec.quick_start import _build

ITEM_SEQ, ITEM_LEN, TIME_SEQ = "item_id_list", "item_length", "timestamp_list"


@pytest.fixture
def native(tiny_config_dict):
    keys = ("dataset", "data_path", "load_col", "checkpoint_dir", "MAX_ITEM_LIST_LENGTH", "show_progress", "state",
            "eval_batch_size")
    return {**{k: tiny_config_dict[k] for k in keys}, "hidden_size": 16, "inner_size": 16, "n_layers": 1, "n_heads": 1,
            "epochs": 6, "learning_rate": 0.01, "stopping_step": 10}


def splits(model, config_dict):
    config = Config(model=model, config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train, valid, test = (loader._dataset for loader in data_preparation(config, dataset))
    return config, dataset, train, valid, test


def trained(model, config_dict):
    config = Config(model=model, config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    dataset, train_data, valid_data, test_data, net, trainer = _build(config)
    trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    trainer.load_model_checkpoint(trainer.saved_model_file)
    return config, dataset, valid_data, test_data, trainer


def valid_items(seq, length):
    return seq[: int(length)].tolist()


# ---- permutations ---------------------------------------------------------------------------


def test_shuffle_histories_moves_only_the_window_and_is_fixed_per_user():
    seq = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 0, 0], [1, 2, 3, 4, 5, 6, 7, 0, 0], [11, 12, 13, 14, 15, 16, 17, 18, 19]])
    length, users = torch.tensor([7, 7, 9]), torch.tensor([5, 5, 6])
    window = shuffle_histories(seq, length, users, seed=3, window=4)
    assert torch.equal(window[0], window[1])  # the same user: the same permutation (the uni100 rows of a user)
    assert torch.equal(window[:, :3], seq[:, :3]) and torch.equal(window[2, :5], seq[2, :5])  # older items stay
    assert torch.equal(window[0, 7:], seq[0, 7:])  # padding never moves
    assert sorted(window[0, 3:7].tolist()) == [4, 5, 6, 7] and window[0, 3:7].tolist() != [4, 5, 6, 7]
    full = shuffle_histories(seq, length, users, seed=3)
    assert sorted(full[2].tolist()) == seq[2].tolist() and full[2].tolist() != seq[2].tolist()
    assert torch.equal(full, shuffle_histories(seq, length, users, seed=3))  # deterministic
    assert not torch.equal(full, shuffle_histories(seq, length, users, seed=4))
    assert torch.equal(seq[0], torch.tensor([1, 2, 3, 4, 5, 6, 7, 0, 0]))  # the input is left as it is


def test_prompt_dates_stay_in_slot_order(native):
    """Only titles (item ids) move: the k-th prompt entry keeps the k-th date."""
    config, dataset, _, _, test = splits("SASRec", native)
    rows = test.inter_feat[:5]
    shuffled = HistoryShuffler(config, "prompt_window", window=6)(rows)
    items, times = history_windows(rows[ITEM_SEQ], rows[ITEM_LEN], 6, rows[TIME_SEQ])
    items_shuffled, times_shuffled = history_windows(shuffled[ITEM_SEQ], shuffled[ITEM_LEN], 6, shuffled[TIME_SEQ])
    assert times_shuffled == times
    assert all(sorted(a) == sorted(b) for a, b in zip(items, items_shuffled)) and items_shuffled != items


@pytest.mark.parametrize("scope", ["prompt_window", "full_sequence"])
def test_shuffle_mode_test_permutes_the_test_inputs_only(native, scope):
    _, _, train0, valid0, test0 = splits("SASRec", native)
    _, _, train, valid, test = splits("SASRec", {**native, "shuffle_mode": "test", "shuffle_scope": scope,
                                                 "shuffle_window": 5})
    assert torch.equal(train.inter_feat[ITEM_SEQ], train0.inter_feat[ITEM_SEQ])
    assert torch.equal(valid.inter_feat[ITEM_SEQ], valid0.inter_feat[ITEM_SEQ])
    assert torch.equal(test.inter_feat[TIME_SEQ], test0.inter_feat[TIME_SEQ])
    assert torch.equal(test.inter_feat["item_id"], test0.inter_feat["item_id"])
    changed = 0
    for row in range(len(test)):
        n = int(test0.inter_feat[ITEM_LEN][row])
        before, after = valid_items(test0.inter_feat[ITEM_SEQ][row], n), valid_items(test.inter_feat[ITEM_SEQ][row], n)
        assert sorted(before) == sorted(after)
        if scope == "prompt_window":
            assert before[: n - 5] == after[: n - 5]
        changed += before != after
    assert changed >= 0.9 * len(test)


def _user_sequences(dataset, split):
    """Each user's training sequence rebuilt from a training split (first item + targets)."""
    rows = split.inter_feat
    out = {}
    for user, seq, length, target in zip(rows["user_id"].tolist(), rows[ITEM_SEQ].tolist(), rows[ITEM_LEN].tolist(),
                                         rows["item_id"].tolist()):
        out.setdefault(user, [seq[0]]).append(target)
    return out


def test_shuffle_mode_train_permutes_training_sequences_once(native):
    _, dataset, train0, valid0, test0 = splits("SASRec", native)
    _, _, train, valid, test = splits("SASRec", {**native, "shuffle_mode": "train", "shuffle_scope": "full_sequence"})
    assert torch.equal(valid.inter_feat[ITEM_SEQ], valid0.inter_feat[ITEM_SEQ])  # evaluation inputs keep their order
    assert torch.equal(test.inter_feat[ITEM_SEQ], test0.inter_feat[ITEM_SEQ])
    assert torch.equal(train.inter_feat[TIME_SEQ], train0.inter_feat[TIME_SEQ])  # dates stay in slot order
    original, shuffled = _user_sequences(dataset, train0), _user_sequences(dataset, train)
    assert original.keys() == shuffled.keys()
    assert all(sorted(original[u]) == sorted(shuffled[u]) for u in original)
    assert sum(original[u] != shuffled[u] for u in original) >= 0.9 * len(original)
    # every training row is a prefix of its user's one shuffled sequence (shuffled once, not per row)
    for user, seq, length, target in zip(train.inter_feat["user_id"].tolist(), train.inter_feat[ITEM_SEQ].tolist(),
                                         train.inter_feat[ITEM_LEN].tolist(), train.inter_feat["item_id"].tolist()):
        assert shuffled[user][: length + 1] == seq[:length] + [target]
    _, _, last_only, _, _ = splits("SASRec", {**native, "shuffle_mode": "train", "shuffle_scope": "full_sequence",
                                              "train_last_item_only": True})
    assert len(last_only) == len(original)
    assert {u: t for u, t in zip(last_only.inter_feat["user_id"].tolist(), last_only.inter_feat["item_id"].tolist())} \
        == {u: s[-1] for u, s in shuffled.items()}


def test_bad_shuffle_settings_name_the_key(native):
    with pytest.raises(ValueError, match="shuffle_scope"):
        splits("SASRec", {**native, "shuffle_mode": "test", "shuffle_scope": "window"})
    with pytest.raises(ValueError, match="shuffle_mode"):
        splits("SASRec", {**native, "shuffle_mode": "both"})


# ---- per-user metrics and warm/cold ------------------------------------------------------------


def test_per_user_metrics_match_recbole_in_both_modes(native):
    config, dataset, valid_data, test_data, trainer = trained("SASRec", native)
    batches = fixed_batches(test_data, config["seed"])
    per_user = evaluate_per_user(trainer, test_data, batches)
    assert len(per_user) == len(test_data._dataset) and sorted(per_user.users.tolist()) == list(range(1, dataset.user_num))
    init_seed(config["seed"], True)  # the same negatives as fixed_batches drew
    assert per_user.mean() == trainer.evaluate(test_data, load_best_model=False)
    assert fixed_batches(test_data, config["seed"])[0][0]["item_id"].tolist() == batches[0][0]["item_id"].tolist()

    # full ranking on the same split, without a new dataset, equals RecBole's own full-ranking pipeline
    full = evaluate_per_user(trainer, full_sort_loader(config, test_data))
    full_config = Config(model="SASRec", config_dict={**native, "eval_args": {"mode": {"valid": "full", "test": "full"}}})
    _, _, full_test = data_preparation(full_config, create_dataset(full_config))
    assert full.mean() == trainer.evaluate(full_test, load_best_model=False)
    rows = test_data._dataset.inter_feat
    target_of = dict(zip(rows["user_id"].tolist(), rows["item_id"].tolist()))
    for result in (per_user, full):
        assert [target_of[u] for u in result.users.tolist()] == result.targets.tolist()


def test_training_counts_and_warm_cold_groups(native):
    config, dataset, train, valid, test = splits("SASRec", native)
    counts = training_item_counts(dataset, valid, test)
    # reference: every interaction of the raw file except each user's last two (by time)
    raw = pd.read_csv(os.path.join(native["data_path"], "tiny", "tiny.inter"), sep="\t", quoting=csv.QUOTE_NONE,
                      dtype=str)
    raw.columns = [c.split(":")[0] for c in raw.columns]
    raw["timestamp"] = raw["timestamp"].astype(float)
    raw = raw.sort_values(["user_id", "timestamp"], kind="stable")
    training = raw[raw.groupby("user_id").cumcount(ascending=False) >= 2]
    expected = training["item_id"].value_counts()
    for token, n in expected.items():
        assert counts[dataset.token2id("item_id", token)] == n
    assert counts.sum() == len(training)

    groups = popularity_groups(counts, 0.35, 0.35)
    n_items = dataset.item_num - 1
    assert groups["warm"].sum() == round(0.35 * n_items) == groups["cold"].sum()
    assert not (groups["warm"] & groups["cold"]).any() and not groups["warm"][0] and not groups["cold"][0]
    assert counts[groups["warm"]].min() >= counts[groups["cold"]].max()
    with pytest.raises(ValueError, match="cold_item_ratio"):
        popularity_groups(counts, 0.7, 0.5)


def test_group_metrics_are_means_over_the_group(native):
    config, dataset, valid_data, test_data, trainer = trained("SASRec", native)
    result = evaluate_per_user(trainer, test_data, fixed_batches(test_data, config["seed"]))
    counts = training_item_counts(dataset, valid_data._dataset, test_data._dataset)
    groups = popularity_groups(counts, 0.35, 0.35)
    report = metrics_by_group(result, groups, counts)
    warm_users = groups["warm"][result.targets]
    assert report["warm"]["users"] == int(warm_users.sum()) > 0 and report["cold"]["users"] > 0
    assert report["warm"]["hit@10"] == round(float(result.values["hit@10"][warm_users].mean()), 4)
    low, high = report["cold"]["item_interactions"]
    assert low == counts[groups["cold"]].min() and high == counts[groups["cold"]].max()


# ---- the diagnostic ---------------------------------------------------------------------------


def test_sasrec_loses_under_shuffling_and_an_order_blind_model_does_not(native, tiny_encoder_path, tmp_path):
    """The tiny data walk the catalogue in steps: a trained SASRec depends on order; LLMSeqSim with an
    unweighted mean of the history is order-blind by construction (change exactly 0, cosine 1)."""
    config, _, _, test_data, trainer = trained("SASRec", {**native, "epochs": 25})
    sasrec = shuffle_diagnostic(trainer, test_data, scopes=("full_sequence",))["full_sequence"]
    assert sasrec["change"]["ndcg@10"] < -0.2 and sasrec["shuffled"]["hit@10"] < sasrec["original"]["hit@10"]
    assert sasrec["cosine"]["user_vec"] < 0.95 and sasrec["cosine"]["h_U"] is None and sasrec["users_changed"] > 0.9

    blind = {**native, "item_text_fields": ["title"], "text_encoder_path": tiny_encoder_path, "llmseqsim_reduce": "none",
             "llmseqsim_agg": "mean", "llmseqsim_decay": "none"}
    config, _, _, test_data, trainer = trained("LLMSeqSim", blind)
    report = shuffle_diagnostic(trainer, test_data)
    for scope in ("prompt_window", "full_sequence"):
        assert report[scope]["shuffled"] == report[scope]["original"]
        assert all(change == 0 for change in report[scope]["change"].values())
        assert report[scope]["cosine"]["user_vec"] == pytest.approx(1.0, abs=1e-5)

    table = write_shuffle_report([{"model": "LLMSeqSim", "shuffle": {"uni100": report}}], str(tmp_path))
    assert list(table["scope"]) == ["prompt_window", "full_sequence"] and (tmp_path / "shuffle.png").stat().st_size > 0
    assert "n/a" in (tmp_path / "shuffle.md").read_text()  # LLMSeqSim has no h_U


def test_llm_representations_and_checkpoint_round_trip(tiny_config_dict):
    config, dataset, valid_data, test_data, trainer = trained("LLMSRec", {**tiny_config_dict, "epochs": 1})
    rows = test_data._dataset[np.arange(4)]
    vectors = user_representations(trainer.model, rows)
    assert vectors["h_U"].shape == (4, trainer.model.llm.hidden_size) and vectors["user_vec"].shape == (4, 16)
    assert torch.allclose(trainer.model.user_head(vectors["h_U"]), vectors["user_vec"], atol=1e-5)
    with torch.no_grad():  # h_U is the LLM's state at [UserOut], as user_repr computes it
        direct = trainer.model.user_repr(rows["item_id_list"], rows["item_length"], rows["timestamp_list"])
    assert torch.allclose(vectors["h_U"], direct, atol=1e-4)
    # both come from the evaluation cache: asking again runs no LLM call
    encode, calls = trainer.model.llm.encode_prompts, []
    trainer.model.llm.encode_prompts = lambda *args, **kwargs: calls.append(1) or encode(*args, **kwargs)
    again = user_representations(trainer.model, rows)
    trainer.model.llm.encode_prompts = encode
    assert not calls and torch.equal(again["h_U"], vectors["h_U"])

    in_process = shuffle_diagnostic(trainer, test_data, scopes=("prompt_window",))["prompt_window"]
    assert 0 < in_process["cosine"]["h_U"] < 1 and 0 < in_process["cosine"]["user_vec"] <= 1
    # the CLI's path: rebuild the run from the checkpoint alone; the same numbers come back
    record = diagnose_checkpoint(trainer.saved_model_file, scopes=("prompt_window",), eval_modes=("uni100",))
    again = record["shuffle"]["uni100"]["prompt_window"]
    assert again["original"] == in_process["original"] and again["shuffled"] == in_process["shuffled"]
    assert again["cosine"]["h_U"] == pytest.approx(in_process["cosine"]["h_U"], abs=1e-5)


def _flags(config_dict):
    return [f"--{key}={json.dumps(value)}" for key, value in config_dict.items()]


def test_cli_reports_checkpoints_and_shuffled_training(native, tmp_path):
    from recbole_llmsrec.leaderboard import shuffle_main as main  # the command line of evaluation.shuffle

    _, _, _, _, trainer = trained("SASRec", native)
    table = main([f"--model_file={trainer.saved_model_file}", f"--results_dir={tmp_path / 'r'}", "--eval_modes=uni100",
                  "--shuffle_scopes=full_sequence"])
    assert list(zip(table["model"], table["eval_mode"], table["scope"])) == [("SASRec", "uni100", "full_sequence")]
    assert {"shuffle.csv", "shuffle.md", "shuffle.png"} <= set(os.listdir(tmp_path / "r" / "tiny"))

    # trained on shuffled vs original sequences (the paper's Table 3), both through the leaderboard
    settings = {k: v for k, v in native.items() if k != "dataset"} | {"epochs": 15}
    main(["--shuffle_mode=train", "--dataset=tiny", "--models=SASRec", f"--results_dir={tmp_path / 'r'}",
          "--shuffle_scopes=none", "--shuffle_scope=full_sequence", *_flags(settings)])
    table = pd.read_csv(tmp_path / "r" / "tiny" / "shuffle_train.csv")
    assert list(table["scope"]) == ["train, full_sequence"] * 2 and list(table["eval_mode"]) == ["uni100", "full"]
    row = table.iloc[0]
    assert row["ndcg@10 shuffled"] < row["ndcg@10"]  # the order pattern of the tiny data is lost
    runs = [f for f in os.listdir(tmp_path / "r" / "tiny" / "runs") if f.endswith(".settings.json")]
    modes = sorted(json.loads((tmp_path / "r" / "tiny" / "runs" / f).read_text())["settings"]["shuffle_mode"] for f in runs)
    assert modes == ["none", "train"]
