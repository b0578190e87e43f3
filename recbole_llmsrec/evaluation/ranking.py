"""Per-user ranking metrics from RecBole's own evaluation steps, on batches fixed once.

RecBole's ``Trainer.evaluate`` returns the mean of each metric over users. The diagnostics need
the per-user values (to split users by their target item, or to compare two orderings of the same
histories on the same sampled negatives), so :func:`evaluate_per_user` runs the trainer's own
batch scoring (``_full_sort_batch_eval`` / ``_neg_sample_batch_eval``), RecBole's ``Collector``
and RecBole's metric classes, and keeps one row per evaluated user. Its means equal
``Trainer.evaluate`` on the same batches.

:func:`fixed_batches` draws the evaluation batches once (for ``uni100``: the sampled negatives), so
several evaluations can see the same candidates.
"""

import inspect

import numpy as np
import torch
from recbole.data.dataloader import FullSortEvalDataLoader
from recbole.evaluator import Collector
from recbole.evaluator.base_metric import TopkMetric
from recbole.evaluator.register import metrics_dict
from recbole.utils import ModelType, init_seed
from tqdm import tqdm


def eval_mode_name(eval_data):
    return "full" if isinstance(eval_data, FullSortEvalDataLoader) else eval_data.config["eval_args"]["mode"]["test"]


def full_sort_loader(config, eval_data):
    """A full-ranking loader over the same split as ``eval_data`` (no new dataset, no new split).

    A sequential model's needs no sampler. A general model's (``Pop``) takes RecBole's sampler of
    ``eval_data`` for the items to mask, as RecBole's own full ranking of such a model does: the
    user's training (and, in the test, validation) items score -inf.
    """
    sampler = None
    if config["MODEL_TYPE"] != ModelType.SEQUENTIAL:
        sampler = eval_data._sampler
        sampler = getattr(sampler, "recbole_sampler", None) or sampler  # not eval_neg_exclude's
        if sampler is None:
            raise ValueError(f"{config['model']} is not sequential: its full ranking needs the sampler of a sampled loader")
    return FullSortEvalDataLoader(config, eval_data._dataset, sampler, shuffle=False)


def fixed_batches(eval_data, seed=None, reproducibility=True):
    """Every batch of ``eval_data``, drawn once. With ``seed``, RecBole's random state is reset
    first, so every model evaluated this way gets the same sampled negatives."""
    if seed is not None:
        init_seed(seed, reproducibility)
    return list(eval_data)


def topk_metrics(config):
    """RecBole's top-k metric objects for ``config['metrics']`` (the per-user ones)."""
    metrics = {}
    for name in config["metrics"]:
        metric_class = metrics_dict[name.lower()]
        if issubclass(metric_class, TopkMetric):
            metrics[name.lower()] = metric_class(config)
    if not metrics:
        raise ValueError(f"metrics {config['metrics']} has no top-k metric (e.g. NDCG, Hit) to report per user")
    return metrics


class PerUserResult:
    """Top-k metrics of each evaluated user (one target each), with the user and target ids."""

    def __init__(self, users, targets, values, decimals):
        self.users = users  # [n] RecBole user ids
        self.targets = targets  # [n] RecBole item ids of the targets
        self.values = values  # {"ndcg@10": [n] array, ...}
        self.decimals = decimals

    def __len__(self):
        return len(self.users)

    def mean(self, mask=None):
        """Metric means over all users (as RecBole reports them) or over ``mask``."""
        if mask is not None and not mask.any():
            return {name: float("nan") for name in self.values}
        return {name: round(float(v.mean() if mask is None else v[mask].mean()), self.decimals) for name, v in self.values.items()}


def _batch_users_and_targets(batched_data, rows, uid_field):
    interaction, row_index, positive_u, positive_i = batched_data
    if len(positive_u) != rows or not torch.equal(torch.sort(positive_u).values, torch.arange(rows)):
        raise ValueError(
            "per-user metrics need exactly one target per evaluated user (RecBole's leave-one-out "
            "split of a sequential model); this evaluation data has users with several"
        )
    targets = torch.empty(rows, dtype=torch.long)
    targets[positive_u] = positive_i.long().cpu()
    users = torch.empty(rows, dtype=torch.long)
    # row_index: a sampled loader's row of each candidate; None, or a general model's full-ranking
    # history index (a tuple), where the interaction holds one row per user
    per_row = row_index if row_index is not None and not isinstance(row_index, tuple) else torch.arange(rows)
    users[per_row] = interaction[uid_field].long().cpu()
    return users, targets


@torch.no_grad()
def evaluate_per_user(trainer, eval_data, batches=None, transform=None, show_progress=False, desc="Evaluate"):
    """Evaluate ``trainer.model`` on ``eval_data`` (or its fixed ``batches``) user by user.

    ``transform`` maps each batch's ``Interaction`` to the one the model sees (e.g. with shuffled
    histories); targets and candidates stay as they were drawn.
    """
    config = trainer.config
    model = trainer.model
    model.eval()
    full = isinstance(eval_data, FullSortEvalDataLoader)
    if full:
        eval_func = trainer._full_sort_batch_eval
        if trainer.item_tensor is None:
            trainer.item_tensor = eval_data._dataset.get_item_feature().to(trainer.device)
    else:
        eval_func = trainer._neg_sample_batch_eval
    trainer.tot_item_num = eval_data._dataset.item_num

    collector = Collector(config)
    users, targets = [], []
    batches = eval_data if batches is None else batches
    iterator = tqdm(batches, total=len(batches), ncols=100, desc=desc, leave=False) if show_progress else batches
    for batched_data in iterator:
        interaction, row_index, positive_u, positive_i = batched_data
        if transform is not None:
            interaction = transform(interaction)
        interaction, scores, positive_u, positive_i = eval_func((interaction, row_index, positive_u, positive_i))
        batch_users, batch_targets = _batch_users_and_targets(batched_data, scores.shape[0], eval_data.uid_field)
        users.append(batch_users)
        targets.append(batch_targets)
        collector.eval_batch_collect(scores, interaction, positive_u, positive_i)
    struct = collector.get_data_struct()

    values = {}
    for name, metric in topk_metrics(config).items():
        pos_index, pos_len = metric.used_info(struct)
        wants_len = len(inspect.signature(metric.metric_info).parameters) > 1
        per_user = metric.metric_info(pos_index, pos_len) if wants_len else metric.metric_info(pos_index)
        for k in metric.topk:
            values[f"{name}@{k}"] = np.asarray(per_user[:, k - 1], dtype=np.float64)
    return PerUserResult(torch.cat(users).numpy(), torch.cat(targets).numpy(), values, config["metric_decimal_place"])
