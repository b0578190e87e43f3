"""Training rows drawn afresh every epoch: K of each user's prefixes instead of all or the last.

RecBole trains a sequential model on every prefix of every user's training sequence (one row per
target); the LLM papers train on the last one only (``train_last_item_only``). An LLM step costs
the same per row whichever prefix it is, so on a small dataset the last-item recipe sees few rows
and overfits them. ``train_rows_per_user: K`` keeps an epoch's cost at K rows per user but draws
the K anew every epoch, uniformly without replacement among the user's ``train_rows_recent``
latest rows (all of them when empty): over epochs the model meets more of each history's targets.

The draw of epoch e depends on ``seed`` and e only. The plugin's trainers say which epoch begins
(:meth:`SampledRowsTrainDataLoader.set_epoch`), so a run resumed from a checkpoint sees the rows
the uninterrupted run would have seen; under another trainer (RecBole's own, for SASRec) each
iteration of the loader is the next epoch, counted from 0.
"""

import math

import numpy as np
from recbole.data.dataloader import TrainDataLoader
from recbole.utils import ModelType

from recbole_llmsrec.config import is_count


def row_settings(config):
    """``(train_rows_per_user, train_rows_recent)`` of ``config``, checked; ``(None, None)`` when off."""
    per_user, recent = config["train_rows_per_user"], config["train_rows_recent"]
    for name, value in (("train_rows_per_user", per_user), ("train_rows_recent", recent)):
        if value is not None and not is_count(value):
            raise ValueError(f"{name} must be a whole number >= 1 or empty; got {value!r}")
    if per_user is not None and config["MODEL_TYPE"] != ModelType.SEQUENTIAL:
        raise ValueError(f"train_rows_per_user draws prefixes of users' sequences; {config['model']} is not a "
                         "sequential model (leave it empty)")
    if per_user is None:
        if recent is not None:
            raise ValueError("train_rows_recent limits the rows that train_rows_per_user draws from; set "
                             "train_rows_per_user too (e.g. 1), or leave both empty for every training row")
        return None, None
    if config["train_last_item_only"]:
        raise ValueError("train_last_item_only keeps one fixed row per user, train_rows_per_user draws "
                         "rows per user every epoch: set train_last_item_only: False to draw them")
    return per_user, recent


def user_row_groups(dataset):
    """Row indices of a built sequential training split, one array per user, oldest target first.

    RecBole's augmentation writes each user's rows in time order (prefix lengths grow), so within
    a user the row index is the order of its targets."""
    uid = np.asarray(dataset.inter_feat[dataset.uid_field])
    order = np.argsort(uid, kind="stable")
    _, starts = np.unique(uid[order], return_index=True)
    return np.split(order, starts[1:])


class SampledRowsTrainDataLoader(TrainDataLoader):
    """RecBole's :class:`TrainDataLoader` over a sequential training split whose epoch is K rows per
    user, drawn every epoch (see the module docstring). Batches are shuffled across users when the
    loader shuffles (training always does)."""

    def __init__(self, config, dataset, sampler, shuffle=True):
        self.rows_per_user, self.rows_recent = row_settings(config)
        if self.rows_per_user is None:
            raise ValueError("SampledRowsTrainDataLoader needs train_rows_per_user")
        super().__init__(config, dataset, sampler, shuffle=shuffle)
        groups = user_row_groups(dataset)
        if self.rows_recent is not None:
            groups = [group[-self.rows_recent:] for group in groups]
        self._groups = groups
        self._epoch_size = sum(min(self.rows_per_user, len(group)) for group in groups)
        self._epoch = 0

    def set_epoch(self, epoch_idx):
        """The epoch whose rows the next iteration draws."""
        self._epoch = int(epoch_idx)

    def epoch_rows(self, epoch_idx):
        """The row indices of epoch ``epoch_idx``, in the order they are trained on."""
        rng = np.random.default_rng([int(self.config["seed"]), int(epoch_idx)])
        k = self.rows_per_user
        rows = np.concatenate([
            group if len(group) <= k else rng.choice(group, size=k, replace=False) for group in self._groups
        ])
        return rng.permutation(rows) if self.shuffle else np.sort(rows)

    def __len__(self):
        return math.ceil(self._epoch_size / self.step)

    def __iter__(self):
        rows = self.epoch_rows(self._epoch)
        self._epoch += 1
        for start in range(0, len(rows), self.step):
            yield self.collate_fn(rows[start:start + self.step].tolist())


def sample_training_rows(config, train_data):
    """``train_data`` as it is, or, with ``train_rows_per_user``, a
    :class:`SampledRowsTrainDataLoader` over the same split."""
    if row_settings(config)[0] is None:
        return train_data
    return SampledRowsTrainDataLoader(config, train_data._dataset, train_data._sampler, shuffle=True)
