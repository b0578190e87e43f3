"""Sampled evaluation candidates (``uniN``/``popN``) whose negatives avoid the user's history.

Why RecBole's own negatives can be items the user interacted with: ``data_preparation`` builds
the evaluation samplers from the *built* datasets, after the split (and, for sequential models,
after augmentation, where every row is a prefix and its target), never from the raw interactions.

* Sequential models must run with ``repeatable: True`` (RecBole's rule), which selects
  ``RepeatableSampler``: its ``sample_by_user_ids`` replaces ``used_ids`` on every call by the
  row's own target, so a negative can be any other item, the user's training, validation and
  test items included. Had it used the split datasets instead, their ``item_id`` column holds
  targets only (the first item of every user is never one), and with ``train_last_item_only``
  the training split keeps one row per user, so the excluded set would depend on the model.
* General models (``Pop``) get ``Sampler``, whose ``used_ids`` per phase are the targets of
  that phase and the earlier ones: a validation negative can still be the user's test item.

``eval_neg_exclude: history`` (this plugin's default, the LLM-SRec code's protocol) instead
draws every validation and test negative outside the user's whole history, train, validation
and test interactions, read from the dataset's full interaction table *before* it is built. That
table is the same for every model of a dataset (a CF model trained on all prefixes, an LLM model
with ``train_last_item_only``, a run with ``shuffle_mode``, which permutes items within a user's
history), so the excluded sets are too. Sampling is RecBole's own (numpy's global random state,
one user after another, rejecting excluded items), so resetting RecBole's seed before iterating a
loader (``fixed_batches``) gives every model the same candidates. ``eval_neg_exclude: recbole``
keeps RecBole's samplers as they are.
"""

import copy

import numpy as np
import pandas as pd
from recbole.data import data_preparation as recbole_data_preparation
from recbole.data.dataloader import NegSampleEvalDataLoader
from recbole.sampler.sampler import AbstractSampler

from recbole_llmsrec.data.rows import sample_training_rows

EVAL_NEG_EXCLUDE = ("history", "recbole")


def eval_neg_exclude(config):
    """The ``eval_neg_exclude`` setting, checked."""
    value = config["eval_neg_exclude"] or "recbole"
    if value not in EVAL_NEG_EXCLUDE:
        raise ValueError(
            f"eval_neg_exclude must be one of {', '.join(EVAL_NEG_EXCLUDE)} (history: sampled evaluation "
            f"negatives avoid every item of the user's history; recbole: RecBole's own sampler), not {value!r}"
        )
    return value


class UserHistories:
    """Every interaction of a dataset's full table: ``used[u]`` is the set of user ``u``'s items,
    ``items`` the item id of every interaction (for ``popN`` sampling)."""

    def __init__(self, dataset):
        feat = dataset.inter_feat
        uid, iid = dataset.uid_field, dataset.iid_field
        seq_field = iid + dataset.config["LIST_SUFFIX"]
        if not isinstance(feat, pd.DataFrame):
            # built already: a sequential table is then its augmented rows (targets and cut prefixes)
            raise ValueError(
                "user histories are read from the dataset's full interaction table, before "
                "dataset.build(); pass a dataset that data_preparation has not built yet"
            )
        users = feat[uid].to_numpy()
        items = feat[iid].to_numpy()
        self.used = np.array([set() for _ in range(dataset.user_num)])
        for user, item in zip(users.tolist(), items.tolist()):
            self.used[user].add(item)
        if seq_field in feat:  # benchmark_filename files of a sequential model hold the histories as lists
            for user, seq in zip(users.tolist(), feat[seq_field].tolist()):
                self.used[user].update(int(i) for i in np.asarray(seq).ravel() if i != 0)
        self.items = items
        self.item_num = dataset.item_num
        full = [u for u, used in enumerate(self.used) if len(used - {0}) >= self.item_num - 1]
        if full:
            raise ValueError(
                f"{len(full)} users interacted with every item, so no negative can be drawn for them; "
                f"filter them (user_inter_num_interval) or set eval_neg_exclude: recbole"
            )


class HistoryExcludingSampler(AbstractSampler):
    """An evaluation sampler whose negatives avoid every item of the user's history.

    It draws exactly as RecBole's samplers do (``AbstractSampler.sample_by_key_ids`` over the
    global numpy random state), keyed by user id. ``recbole_sampler`` is the sampler RecBole
    built for the loader (a general model's full-ranking loader needs its ``used_ids``).
    """

    def __init__(self, histories, distribution, alpha=1.0, phase=None, recbole_sampler=None):
        self.histories = histories
        self.item_num = histories.item_num
        self.phase = phase
        self.recbole_sampler = recbole_sampler
        super().__init__(distribution=distribution, alpha=alpha)

    def _uni_sampling(self, sample_num):
        return np.random.randint(1, self.item_num, sample_num)

    def _get_candidates_list(self):
        return list(self.histories.items)

    def get_used_ids(self):
        return self.histories.used

    def set_phase(self, phase):
        sampler = copy.copy(self)
        sampler.phase = phase
        return sampler

    def sample_by_user_ids(self, user_ids, item_ids, num):
        return self.sample_by_key_ids(np.asarray(user_ids), num)


def exclude_history(loader, histories):
    """Give a sampled evaluation ``loader`` a :class:`HistoryExcludingSampler`; other loaders
    (training, full ranking) are left alone. Returns the loader."""
    if not isinstance(loader, NegSampleEvalDataLoader):
        return loader
    args = loader.neg_sample_args
    if args["distribution"] == "none" or args["sample_num"] == "none":
        return loader
    original = loader._sampler
    loader._sampler = HistoryExcludingSampler(
        histories, args["distribution"], alpha=args.get("alpha", getattr(original, "alpha", 1.0)),
        phase=getattr(original, "phase", None), recbole_sampler=original,
    )
    return loader


def data_preparation(config, dataset):
    """RecBole's ``data_preparation``, with the sampled validation and test negatives of
    ``eval_neg_exclude`` (see the module docstring) and the training rows of ``train_rows_per_user``
    (:mod:`recbole_llmsrec.data.rows`). Call it on a dataset not built yet."""
    mode = eval_neg_exclude(config)
    histories = UserHistories(dataset) if mode == "history" else None  # before build() augments it
    train_data, valid_data, test_data = recbole_data_preparation(config, dataset)
    train_data = sample_training_rows(config, train_data)  # train_rows_per_user: K rows per user, drawn every epoch
    if histories is not None:
        exclude_history(valid_data, histories)
        exclude_history(test_data, histories)
    return train_data, valid_data, test_data
