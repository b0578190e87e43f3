"""``train_rows_per_user`` / ``train_rows_recent``: K training rows per user, drawn afresh every
epoch from the user's latest rows, reproducible per (seed, epoch) so that a resumed run trains on
what the uninterrupted run would have."""

import math

import numpy as np
import pytest
from recbole.utils import init_seed

from recbole_llmsrec.config import Config
from recbole_llmsrec.data import create_dataset, data_preparation
from recbole_llmsrec.data.rows import SampledRowsTrainDataLoader, user_row_groups
from recbole_llmsrec.quick_start import _build


def prepared(config_dict, model="LLMSRec", **overrides):
    config = Config(model=model, config_dict={**config_dict, "train_last_item_only": False, **overrides})
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    return config, data_preparation(config, dataset)[0]


def rows_by_user(loader, rows):
    uid = np.asarray(loader._dataset.inter_feat[loader._dataset.uid_field])
    out = {}
    for row in rows.tolist():
        out.setdefault(int(uid[row]), []).append(row)
    return out


@pytest.mark.parametrize("per_user, recent", [(1, None), (2, 3)])
def test_each_epoch_draws_k_rows_per_user_from_the_latest(tiny_config_dict, per_user, recent):
    config, loader = prepared(tiny_config_dict, train_rows_per_user=per_user, train_rows_recent=recent)
    assert isinstance(loader, SampledRowsTrainDataLoader)
    groups = {int(loader._dataset.inter_feat[loader._dataset.uid_field][g[0]]): g
              for g in user_row_groups(loader._dataset)}
    # within a user, rows are in time order: the prefix grows by one item per row (until the cap)
    lengths = np.asarray(loader._dataset.inter_feat[loader._dataset.item_list_length_field])
    assert all(np.all(np.diff(lengths[g]) >= 0) for g in groups.values())
    epochs = [loader.epoch_rows(e) for e in range(4)]
    expected = sum(min(per_user, len(g) if recent is None else min(recent, len(g))) for g in groups.values())
    for rows in epochs:
        assert len(rows) == expected and len(set(rows.tolist())) == len(rows)
        for user, picked in rows_by_user(loader, rows).items():
            allowed = groups[user] if recent is None else groups[user][-recent:]
            assert len(picked) == min(per_user, len(allowed))
            assert set(picked) <= set(allowed.tolist())
    assert len({tuple(sorted(rows.tolist())) for rows in epochs}) > 1  # drawn afresh
    assert np.array_equal(loader.epoch_rows(2), epochs[2])  # the same (seed, epoch), the same rows
    assert len(loader) == math.ceil(expected / config["train_batch_size"])
    # iterating gives exactly the epoch's rows in batches; each iteration is the next epoch
    for epoch in (0, 1):
        seen = [(u, i) for batch in loader for u, i in zip(batch["user_id"].tolist(), batch["item_id"].tolist())]
        feat = loader._dataset.inter_feat
        assert seen == [(int(feat["user_id"][r]), int(feat["item_id"][r])) for r in epochs[epoch]]


def test_the_trainer_draws_the_rows_of_each_epoch_index(tiny_config_dict):
    config = Config(model="LLMSRec", config_dict={
        **tiny_config_dict, "train_last_item_only": False, "train_rows_per_user": 1, "llmsrec_bypass_llm": True,
        "epochs": 3, "eval_step": 0})
    init_seed(config["seed"], config["reproducibility"])
    _, train_data, _, _, model, trainer = _build(config)
    seen = []
    calculate_loss = model.calculate_loss

    def recorded(interaction):
        seen.append(list(zip(interaction["user_id"].tolist(), interaction["item_id"].tolist())))
        return calculate_loss(interaction)

    model.calculate_loss = recorded
    feat = train_data._dataset.inter_feat

    def expected(epoch):
        return [(int(feat["user_id"][r]), int(feat["item_id"][r])) for r in train_data.epoch_rows(epoch)]

    trainer.fit(train_data, None, saved=False)
    per_epoch = len(train_data)
    assert len(seen) == 3 * per_epoch
    for epoch in range(3):
        assert sum(seen[epoch * per_epoch:(epoch + 1) * per_epoch], []) == expected(epoch)
    # a run resumed at epoch 2 (as from a checkpoint) trains on the rows of epoch 2, not of epoch 0
    seen.clear()
    trainer.start_epoch = 2
    trainer.fit(train_data, None, saved=False)
    assert sum(seen, []) == expected(2)


def test_row_settings_are_checked(tiny_config_dict):
    with pytest.raises(ValueError, match="train_last_item_only: False"):
        prepared(tiny_config_dict, train_last_item_only=True, train_rows_per_user=1)
    with pytest.raises(ValueError, match="set train_rows_per_user too"):
        prepared(tiny_config_dict, train_rows_recent=5)
    for bad in (0, 1.5, True, -1):
        with pytest.raises(ValueError, match="train_rows_per_user must be"):
            prepared(tiny_config_dict, train_rows_per_user=bad)
    with pytest.raises(ValueError, match="not a sequential model"):
        prepared({k: tiny_config_dict[k] for k in ("dataset", "data_path", "load_col", "checkpoint_dir", "state")},
                 model="Pop", train_rows_per_user=1)
    _, loader = prepared(tiny_config_dict)  # empty: RecBole's loader over every row
    assert not isinstance(loader, SampledRowsTrainDataLoader)
