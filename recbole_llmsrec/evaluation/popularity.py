"""Warm and cold items: metrics split by the target item's popularity in the training data.

The LLM-SRec paper (Fig. 4) follows A-LLMRec: items are ranked by their number of training
interactions; the top 35% of the catalogue are *warm*, the bottom 35% *cold* (``warm_item_ratio``,
``cold_item_ratio``). Each evaluated user falls in the group of its target item, and the metrics
are averaged per group.

Training interactions are those RecBole trains on under the leave-one-out split: every interaction
of a user except its validation and test targets. They are counted from the full dataset, not from
the training split, whose rows are prefixes (the first item of a user is never a target there, and
``train_last_item_only`` keeps one row per user).
"""

import numpy as np
import torch

GROUPS = ("warm", "cold")


def training_item_counts(dataset, valid_dataset, test_dataset):
    """Training interactions of every item id (``[item_num]``; padding id 0 counts nothing).

    ``dataset`` is the built dataset: a sequential one has a row per interaction that has a
    history, a general one (``Pop``) a row per interaction; ``valid_dataset`` / ``test_dataset``
    are its validation and test splits.
    """
    if dataset.config["benchmark_filename"] is not None:
        raise ValueError(
            "warm/cold items need RecBole's own split (eval_args split LS); with benchmark_filename "
            "the training interactions are not known here"
        )
    iid, n = dataset.iid_field, dataset.item_num
    rows = dataset.inter_feat
    counts = torch.bincount(rows[iid], minlength=n)
    if hasattr(dataset, "item_list_length_field"):  # sequential: rows are (history, target) pairs
        # each user's first interaction only ever appears as the start of its length-1 history
        first = rows[iid + dataset.config["LIST_SUFFIX"]][rows[dataset.item_list_length_field] == 1][:, 0]
        counts += torch.bincount(first, minlength=n)
    for split in (valid_dataset, test_dataset):
        counts -= torch.bincount(split.inter_feat[iid], minlength=n)
    counts[0] = 0
    return counts.numpy()


def popularity_groups(counts, warm_ratio, cold_ratio):
    """``{"warm": bool[item_num], "cold": bool[item_num]}`` over the catalogue (ids 1..n-1).

    Items are ranked by count (ties by item id, so the split is deterministic); the first
    ``round(warm_ratio * n)`` are warm and the last ``round(cold_ratio * n)`` cold.
    """
    if not (0 < warm_ratio and 0 < cold_ratio and warm_ratio + cold_ratio <= 1):
        raise ValueError(
            f"warm_item_ratio ({warm_ratio}) and cold_item_ratio ({cold_ratio}) must be positive and "
            f"sum to at most 1"
        )
    items = np.arange(1, len(counts))
    ranked = items[np.lexsort((items, -counts[1:]))]  # most interacted first
    n_warm, n_cold = int(round(warm_ratio * len(items))), int(round(cold_ratio * len(items)))
    warm, cold = np.zeros(len(counts), dtype=bool), np.zeros(len(counts), dtype=bool)
    warm[ranked[:n_warm]] = True
    cold[ranked[len(ranked) - n_cold :]] = True
    return {"warm": warm, "cold": cold}


def metrics_by_group(result, groups, counts=None):
    """Per-group metric means of a :class:`~recbole_llmsrec.evaluation.ranking.PerUserResult`.

    Each group's entry also says how many users it holds and, with ``counts``, the range of
    training interactions of its items.
    """
    out = {}
    for name, is_member in groups.items():
        mask = is_member[result.targets]
        entry = {**result.mean(mask), "users": int(mask.sum())}
        if counts is not None:
            members = counts[np.flatnonzero(is_member)]
            entry["item_interactions"] = [int(members.min()), int(members.max())] if len(members) else None
        out[name] = entry
    return out


def warm_cold(config, dataset, valid_dataset, test_dataset, result):
    """Metrics of ``result`` for warm and cold target items, with the ratios set in ``config``."""
    counts = training_item_counts(dataset, valid_dataset, test_dataset)
    groups = popularity_groups(counts, config["warm_item_ratio"], config["cold_item_ratio"])
    return metrics_by_group(result, groups, counts)
