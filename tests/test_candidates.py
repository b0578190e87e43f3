"""Sampled evaluation candidates: negatives outside the user's history, the same for every model;
RecBole's Pop through the leaderboard; the stable choice of each user's last training row."""

import csv
import os

import pandas as pd
import pytest
from recbole.utils import init_seed

from recbole_llmsrec.config import Config
from recbole_llmsrec.data import create_dataset, data_preparation
from recbole_llmsrec.data.dataset import last_item_per_user
from recbole_llmsrec.evaluation.ranking import fixed_batches
from recbole_llmsrec.leaderboard import run_settings, train_and_evaluate
from recbole_llmsrec.quick_start import _build
from recbole_llmsrec.teacher import teacher_cache_path


@pytest.fixture
def native(tiny_config_dict):
    keys = ("dataset", "data_path", "load_col", "checkpoint_dir", "MAX_ITEM_LIST_LENGTH", "show_progress", "state",
            "eval_batch_size")
    return {**{k: tiny_config_dict[k] for k in keys}, "hidden_size": 16, "inner_size": 16, "n_layers": 1, "n_heads": 1,
            "epochs": 1}


def raw_histories(config, dataset):
    """Each user's items (internal ids), read from the .inter file itself: train, valid and test."""
    raw = pd.read_csv(os.path.join(config["data_path"], f"{config['dataset']}.inter"), sep="\t",
                      quoting=csv.QUOTE_NONE, dtype=str)
    raw.columns = [c.split(":")[0] for c in raw.columns]
    out = {}
    for user, item in zip(raw["user_id"], raw["item_id"]):
        out.setdefault(int(dataset.token2id("user_id", user)), set()).add(int(dataset.token2id("item_id", item)))
    return out


def candidates(loader, seed):
    """``{user: [target, negative, ...]}`` of a sampled loader, drawn after resetting RecBole's seed."""
    out = {}
    for interaction, _, _, _ in fixed_batches(loader, seed):
        for user, item in zip(interaction["user_id"].tolist(), interaction["item_id"].tolist()):
            out.setdefault(user, []).append(item)
    return out


def loaders(model, config_dict):
    config = Config(model=model, config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    _, valid, test = data_preparation(config, dataset)
    return config, dataset, valid, test


@pytest.mark.parametrize("model", ["SASRec", "Pop"])
def test_negatives_avoid_the_users_whole_history_by_default(native, model):
    config, dataset, valid, test = loaders(model, native)
    assert config["eval_neg_exclude"] == "history"
    history = raw_histories(config, dataset)
    targets = {split: dict(zip(data._dataset.inter_feat["user_id"].tolist(), data._dataset.inter_feat["item_id"].tolist()))
               for split, data in (("valid", valid), ("test", test))}
    for split, data in (("valid", valid), ("test", test)):
        drawn = candidates(data, config["seed"])
        assert sorted(drawn) == sorted(history)  # every user, once
        for user, (target, *negatives) in drawn.items():
            assert target == targets[split][user] and len(negatives) == 100
            assert not set(negatives) & history[user], f"{split} negatives of user {user} are in the history"


def test_recbole_switch_brings_recboles_sampler_back(native):
    config, dataset, _, test = loaders("SASRec", {**native, "eval_neg_exclude": "recbole"})
    history = raw_histories(config, dataset)
    drawn = candidates(test, config["seed"])
    # RecBole's sequential sampler excludes the row's target only
    assert all(target not in negatives for target, *negatives in drawn.values())
    assert sum(len(set(negatives) & history[user]) for user, (_, *negatives) in drawn.items()) > 0
    _, _, _, default = loaders("SASRec", native)
    assert candidates(default, config["seed"]) != drawn
    with pytest.raises(ValueError, match="eval_neg_exclude"):
        loaders("SASRec", {**native, "eval_neg_exclude": "targets"})


def test_uni99_is_the_papers_100_candidates(native):
    config, dataset, _, test = loaders("SASRec", {**native, "eval_args": {"mode": {"valid": "uni99", "test": "uni99"}}})
    history = raw_histories(config, dataset)
    drawn = candidates(test, config["seed"])
    assert {len(c) for c in drawn.values()} == {100}
    assert not any(set(negatives) & history[user] for user, (_, *negatives) in drawn.items())


def test_every_model_ranks_the_same_candidates(native, tiny_config_dict):
    """A CF model trained on all prefixes, an LLM model trained on one row per user, a general
    model and a run on shuffled training sequences: one set of test candidates after the seed reset."""
    runs = {
        "SASRec": ("SASRec", native),
        "LLMSRec": ("LLMSRec", {**tiny_config_dict, "epochs": 1}),
        "Pop": ("Pop", native),
        "SASRec shuffled": ("SASRec", {**native, "shuffle_mode": "train", "shuffle_scope": "full_sequence"}),
    }
    drawn = {}
    for name, (model, config_dict) in runs.items():
        config = Config(model=model, config_dict=config_dict)
        init_seed(config["seed"], config["reproducibility"])
        _, train_data, valid_data, test_data, _, _ = _build(config)
        if model == "LLMSRec":
            assert len(train_data._dataset) == len(test_data._dataset)  # one training row per user
        drawn[name] = (candidates(test_data, config["seed"]), candidates(valid_data, config["seed"]))
    reference = drawn.pop("SASRec")
    assert len(reference[0]) == 60
    for name, other in drawn.items():
        assert other == reference, f"{name} ranks other candidates than SASRec"


def test_the_run_key_and_the_teacher_key_follow_the_protocol(native):
    base = {k: native[k] for k in ("dataset", "data_path", "load_col")}
    assert run_settings("SASRec", base)[2] != run_settings("SASRec", {**base, "eval_neg_exclude": "recbole"})[2]
    config = Config(model="LLMSRec", config_dict=base)
    dataset = create_dataset(config)
    recbole = Config(model="LLMSRec", config_dict={**base, "eval_neg_exclude": "recbole"})
    assert teacher_cache_path(config, dataset) != teacher_cache_path(recbole, dataset)


def test_pop_runs_through_the_leaderboard(native):
    record = train_and_evaluate("Pop", native, shuffle_scopes=("prompt_window",))
    assert record["candidates"] == {"mode": "uni100", "negatives": 100, "candidates": 101, "negatives_exclude": "history"}
    for mode in ("uni100", "full"):
        assert record["users"][mode] == 60
        assert all(0 <= value <= 1 for value in record["results"][mode].values())
        assert set(record["warm_cold"][mode]) == {"warm", "cold"}
    assert record["results"]["uni100"]["hit@10"] > 0 and record["full_error"] is None
    assert "shuffle" not in record and "no item sequence" in record["shuffle_skipped"]
    # RecBole counts Pop's items in one pass whatever epochs is: nothing to converge
    assert record["training"]["stopped_by"] == "training-free" and record["training"]["epochs_max"] == 1


def test_last_training_row_is_the_latest_when_lengths_tie(native):
    """With MAX_ITEM_LIST_LENGTH 3 every long history has many rows of length 3: the one kept must
    be the user's last training interaction, with the three before it as its history."""
    config = Config(model="SASRec", config_dict={**native, "MAX_ITEM_LIST_LENGTH": 3})
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    history = {}
    raw = pd.read_csv(os.path.join(config["data_path"], "tiny.inter"), sep="\t", dtype=str)
    raw.columns = [c.split(":")[0] for c in raw.columns]
    raw = raw.assign(timestamp=raw["timestamp"].astype(float)).sort_values(["user_id", "timestamp"], kind="stable")
    for user, item in zip(raw["user_id"], raw["item_id"]):
        history.setdefault(int(dataset.token2id("user_id", user)), []).append(int(dataset.token2id("item_id", item)))
    train = dataset.build()[0]
    lengths = train.inter_feat["item_length"]
    assert (lengths == 3).sum() > 5 * len(history)  # many ties
    last = last_item_per_user(train).inter_feat
    assert len(last) == len(history)
    for user, target, seq in zip(last["user_id"].tolist(), last["item_id"].tolist(), last["item_id_list"].tolist()):
        items = history[user][:-2]  # the validation and test items are not training targets
        assert target == items[-1] and seq == items[-4:-1], f"user {user}: not the last training row"
