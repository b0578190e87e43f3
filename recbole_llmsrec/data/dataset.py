"""Dataset selection, plus the one-target-per-user training split of the LLM papers."""

import torch
from recbole.data import create_dataset as recbole_create_dataset
from recbole.data.dataset import SequentialDataset
from recbole.utils import ModelType


class LastItemSequentialDataset(SequentialDataset):
    """RecBole's :class:`SequentialDataset` whose training split keeps one row per user.

    RecBole trains sequential models on every prefix of every sequence. LLM-SRec and its
    baselines train on the longest training prefix of each user only (target = the user's last
    training item), which is what ``train_last_item_only: True`` selects. Validation and test
    splits are untouched.
    """

    def build(self):
        datasets = super().build()
        train = datasets[0]
        uid = train.inter_feat[train.uid_field]
        length = train.inter_feat[train.config["ITEM_LIST_LENGTH_FIELD"]]
        # the longest prefix per user: sort by (user, length) and keep each user's last row
        order = torch.argsort(uid * (int(length.max()) + 1) + length)
        sorted_uid = uid[order]
        is_last = torch.ones_like(sorted_uid, dtype=torch.bool)
        is_last[:-1] = sorted_uid[1:] != sorted_uid[:-1]
        keep = torch.sort(order[is_last]).values
        datasets[0] = train.copy(train.inter_feat[keep])
        return datasets


def create_dataset(config):
    """RecBole's ``create_dataset``, except ``train_last_item_only`` sequential runs."""
    if config["MODEL_TYPE"] == ModelType.SEQUENTIAL and config["train_last_item_only"]:
        return LastItemSequentialDataset(config)
    return recbole_create_dataset(config)
