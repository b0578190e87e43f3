"""Dataset selection: the one-target-per-user training split of the LLM papers, and shuffled
sequences for the LLM-SRec paper's order experiments."""

import os

import torch
import yaml
from recbole.data import create_dataset as recbole_create_dataset
from recbole.data.dataset import SequentialDataset
from recbole.utils import ModelType

from recbole_llmsrec.cli import UserError
from recbole_llmsrec.data.shuffle import (
    check_shuffle_settings,
    scope_window,
    shuffle_histories,
    shuffle_training_part,
)


def last_item_per_user(train):
    """The training split with only the longest prefix of each user (target = last training item)."""
    uid = train.inter_feat[train.uid_field]
    length = train.inter_feat[train.config["ITEM_LIST_LENGTH_FIELD"]]
    # the longest prefix per user: sort by (user, length) and keep each user's last row. Lengths
    # stop growing at MAX_ITEM_LIST_LENGTH, so a long history has many rows of equal key; a stable
    # sort keeps them in the split's order (by time), so the last is the latest target.
    order = torch.argsort(uid * (int(length.max()) + 1) + length, stable=True)
    sorted_uid = uid[order]
    is_last = torch.ones_like(sorted_uid, dtype=torch.bool)
    is_last[:-1] = sorted_uid[1:] != sorted_uid[:-1]
    keep = torch.sort(order[is_last]).values
    return train.copy(train.inter_feat[keep])


class LastItemSequentialDataset(SequentialDataset):
    """RecBole's :class:`SequentialDataset` whose training split keeps one row per user.

    RecBole trains sequential models on every prefix of every sequence. LLM-SRec and its
    baselines train on the longest training prefix of each user only (target = the user's last
    training item), which is what ``train_last_item_only: True`` selects. Validation and test
    splits are untouched.
    """

    def build(self):
        datasets = super().build()
        datasets[0] = last_item_per_user(datasets[0])
        return datasets


class ShuffledSequentialDataset(SequentialDataset):
    """RecBole's :class:`SequentialDataset` with shuffled histories (``shuffle_mode``).

    ``train``: each user's training interactions are permuted once, before the training prefixes
    are built (so targets move too); validation and test inputs keep their real order, as in the
    paper's shuffled-training experiment. ``test``: the test inputs are permuted. Timestamps never
    move (prompt dates stay in slot order). ``train_last_item_only`` applies as usual.
    """

    def __init__(self, config, permute_training=False):
        self._permute_training = permute_training
        super().__init__(config)

    def _eval_per_user(self, n):
        # the interactions RecBole's leave-one-out split keeps out of training for a user with n
        held_out = {"valid_and_test": 2, "valid_only": 1, "test_only": 1}[self.config["eval_args"]["split"]["LS"]]
        return max(0, min(held_out, n - 2))

    def data_augmentation(self):
        if self._permute_training:
            self.sort(by=[self.uid_field, self.time_field], ascending=True)
            window = scope_window(self.config["shuffle_scope"], self.config["shuffle_window"])
            order = torch.from_numpy(shuffle_training_part(
                self.inter_feat[self.uid_field].numpy(), self._eval_per_user, self.config["shuffle_seed"], window))
            for field in self.inter_feat.columns:
                if field not in (self.uid_field, self.time_field):
                    self.inter_feat[field] = self.inter_feat[field][order]
        super().data_augmentation()  # sorts by (user, time) again, stably: the permuted order stays

    def build(self):
        config = self.config
        mode = config["shuffle_mode"]
        check_shuffle_settings(mode, config["shuffle_scope"], config["shuffle_window"])
        split = config["eval_args"]["split"]
        if config["benchmark_filename"] is not None or not isinstance(split, dict) or "LS" not in split:
            raise ValueError(
                f"shuffle_mode {mode} needs RecBole's leave-one-out split by time (eval_args: "
                f"{{split: {{LS: valid_and_test}}, order: TO}}, the plugin's default), not {split!r}"
                + (" with benchmark_filename" if config["benchmark_filename"] is not None else "")
            )
        datasets = super().build()
        if mode == "train":
            shuffled = type(self)(config, permute_training=True)
            for field in (self.uid_field, self.iid_field):
                if shuffled.field2id_token[field].tolist() != self.field2id_token[field].tolist():
                    raise RuntimeError(f"the shuffled copy of {config['dataset']} maps {field} differently")
            datasets[0] = shuffled.recbole_build()[0]
        elif mode == "test":
            test = datasets[2].inter_feat
            item_seq_field = self.iid_field + config["LIST_SUFFIX"]
            test[item_seq_field] = shuffle_histories(
                test[item_seq_field], test[self.item_list_length_field], test[self.uid_field],
                config["shuffle_seed"], scope_window(config["shuffle_scope"], config["shuffle_window"]),
            )
        if config["train_last_item_only"]:
            datasets[0] = last_item_per_user(datasets[0])
        return datasets

    def recbole_build(self):
        """RecBole's own build (split) of this dataset, without the shuffle_mode steps above."""
        return SequentialDataset.build(self)


def _recbole_downloads(name):
    """Whether RecBole knows where to download the dataset ``name`` (its ``url.yaml``)."""
    import recbole

    path = os.path.join(os.path.dirname(recbole.__file__), "properties", "dataset", "url.yaml")
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        return name in (yaml.safe_load(f) or {})


def check_dataset_files(config):
    """Stop with the fix when the interaction file is not where RecBole reads it,
    ``<data_path>/<dataset>/<dataset>.inter`` (a dataset RecBole can download is left to it)."""
    name, folder = config["dataset"], config["data_path"]
    inter = os.path.join(folder, f"{name}.inter")
    if config["benchmark_filename"] or os.path.isfile(inter):
        return
    if not os.path.exists(folder) and _recbole_downloads(name):
        return
    where = f"{folder} does not exist" if not os.path.isdir(folder) else f"{folder} has no {name}.inter"
    data_path = os.path.dirname(os.path.normpath(folder))
    raise UserError(
        f"dataset {name!r} not found: {where}. RecBole reads <data_path>/<name>/<name>.inter (and "
        f"<name>.item, <name>.user if there): set data_path (now {data_path!r}) to the folder that holds "
        f"{name}/, with --data_path=... or in a config file, or check the dataset name"
    )


def create_dataset(config):
    """RecBole's ``create_dataset``, except for sequential runs with ``train_last_item_only`` or
    ``shuffle_mode``."""
    check_dataset_files(config)
    shuffle_mode = config["shuffle_mode"] or "none"
    if config["MODEL_TYPE"] == ModelType.SEQUENTIAL:
        if shuffle_mode != "none":
            return ShuffledSequentialDataset(config)
        if config["train_last_item_only"]:
            return LastItemSequentialDataset(config)
    elif shuffle_mode != "none":
        raise ValueError(f"shuffle_mode {shuffle_mode} permutes sequences; {config['model']} is not a sequential model")
    return recbole_create_dataset(config)
