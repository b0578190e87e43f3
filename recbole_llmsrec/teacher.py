"""The frozen CF-SRec teacher: a RecBole SASRec, loaded from a checkpoint or trained once and cached.

``teacher_checkpoint`` names a RecBole SASRec checkpoint. When it is empty, the teacher is trained
with RecBole's own SASRec and trainer on the same dataset and split (training part; validation
for early stopping), cached under ``<checkpoint_dir>/teacher/`` under a key of every setting that
changes it, and reused by later runs.
"""

import contextlib
import hashlib
import json
import logging
import os
import random

import numpy as np
import torch
from recbole.model.sequential_recommender.sasrec import SASRec
from recbole.utils import init_seed

from recbole_llmsrec.compat import atomic_torch_save, load_recbole_checkpoint
from recbole_llmsrec.config import Config
from recbole_llmsrec.data import create_dataset, data_preparation
from recbole_llmsrec.utils import get_trainer

logger = logging.getLogger(__name__)

# Settings besides the dataset's own that decide which items exist and how sequences are cut, and
# which validation candidates pick the teacher's best epoch.
_SPLIT_KEYS = ("eval_args", "eval_neg_exclude", "MAX_ITEM_LIST_LENGTH", "seed", "reproducibility")


def item_fingerprint(dataset):
    """A hash of the item id order: equal fingerprints mean equal internal item ids."""
    tokens = dataset.field2id_token[dataset.iid_field]
    return hashlib.sha1("\x1f".join(map(str, tokens)).encode("utf-8")).hexdigest()


def _dataset_settings(config):
    keys = list(config.parameters["Dataset"]) + list(_SPLIT_KEYS)
    # shuffled training with shuffle_teacher_too: the teacher learns the shuffled sequences too
    if config["shuffle_mode"] == "train" and config["shuffle_teacher_too"]:
        keys += ["shuffle_mode", "shuffle_seed", "shuffle_scope", "shuffle_window"]
    return {key: config[key] for key in sorted(set(keys)) if key in config}


def teacher_cache_path(config, dataset):
    data = _dataset_settings(config)
    if data.get("eval_neg_exclude") == "recbole":
        del data["eval_neg_exclude"]  # teachers cached before the key existed were validated this way
    settings = {
        "dataset": config["dataset"],
        "data": data,
        "teacher": config["teacher_config"],
        "items": item_fingerprint(dataset),
    }
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return os.path.join(config["checkpoint_dir"], "teacher", f"SASRec-{config['dataset']}-{digest}.pth")


@contextlib.contextmanager
def preserved_rng_state():
    """Training a teacher must not change the random stream of the run that asked for it."""
    state = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    try:
        yield
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])
        torch.set_rng_state(state[2])


class TeacherConfig(Config):
    """The teacher's configuration: the student's --key=value flags are not the teacher's."""

    def _load_cmd_line(self):
        return {}


def train_teacher(config, dataset, path):
    """Train RecBole's SASRec with ``teacher_config`` on the same data and split; save to ``path``."""
    overrides = dict(_dataset_settings(config))
    overrides.update(
        {
            # RecBole appends the dataset name to data_path again
            "data_path": os.path.dirname(os.path.normpath(config["data_path"])),
            "checkpoint_dir": config["checkpoint_dir"],
            "use_gpu": config["use_gpu"],
            "gpu_id": config["gpu_id"],
            "show_progress": config["show_progress"],
            "metrics": config["metrics"],
            "topk": config["topk"],
            "valid_metric": config["valid_metric"],
            "train_last_item_only": False,
        }
    )
    overrides.update(config["teacher_config"])
    teacher_config = TeacherConfig(model="SASRec", dataset=config["dataset"], config_dict=overrides)
    logger.info(
        f"teacher_checkpoint is not set: training the SASRec teacher on {config['dataset']} "
        f"({config['teacher_config']}); it is cached at {path} for later runs"
    )
    with preserved_rng_state():
        init_seed(teacher_config["seed"], teacher_config["reproducibility"])
        teacher_dataset = create_dataset(teacher_config)
        if item_fingerprint(teacher_dataset) != item_fingerprint(dataset):
            raise RuntimeError("the teacher's dataset maps item ids differently from the student's")
        train_data, valid_data, _ = data_preparation(teacher_config, teacher_dataset)
        init_seed(teacher_config["seed"], teacher_config["reproducibility"])
        model = SASRec(teacher_config, train_data._dataset).to(teacher_config["device"])
        trainer = get_trainer(teacher_config["MODEL_TYPE"], "SASRec")(teacher_config, model)
        partial = f"{path}.partial"
        trainer.saved_model_file = partial
        best_score, _ = trainer.fit(train_data, valid_data, saved=True, show_progress=teacher_config["show_progress"])
    checkpoint = load_recbole_checkpoint(partial)
    checkpoint["item_fingerprint"] = item_fingerprint(dataset)
    atomic_torch_save(checkpoint, path)
    os.remove(partial)
    logger.info(f"SASRec teacher trained (best valid {teacher_config['valid_metric']} = {best_score:.4f})")


def check_teacher_checkpoint(checkpoint, config, dataset, path):
    """Refuse a checkpoint that is not a SASRec of this dataset, item set and sequence length."""
    fix = (
        "set teacher_checkpoint to a RecBole SASRec checkpoint trained on this dataset, "
        "or leave it empty to train one"
    )
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "config" not in checkpoint:
        raise ValueError(f"teacher checkpoint {path} is not a RecBole checkpoint; {fix}")
    ckpt_config = checkpoint["config"]
    if ckpt_config["model"] != "SASRec":
        raise ValueError(f"teacher checkpoint {path} holds {ckpt_config['model']}, not SASRec; {fix}")
    if ckpt_config["dataset"] != config["dataset"]:
        raise ValueError(
            f"teacher checkpoint {path} was trained on dataset {ckpt_config['dataset']!r}, this run "
            f"uses {config['dataset']!r}; {fix}"
        )
    n_items = checkpoint["state_dict"]["item_embedding.weight"].shape[0]
    if n_items != dataset.item_num:
        raise ValueError(
            f"teacher checkpoint {path} knows {n_items} item ids, this dataset has "
            f"{dataset.item_num} (different filtering?); {fix}"
        )
    fingerprint = checkpoint.get("item_fingerprint")
    if fingerprint is not None and fingerprint != item_fingerprint(dataset):
        raise ValueError(f"teacher checkpoint {path} maps item ids differently from this dataset; {fix}")
    max_len = checkpoint["state_dict"]["position_embedding.weight"].shape[0]
    if max_len != config["MAX_ITEM_LIST_LENGTH"]:
        raise ValueError(
            f"teacher checkpoint {path} has MAX_ITEM_LIST_LENGTH {max_len}, this run uses "
            f"{config['MAX_ITEM_LIST_LENGTH']}; set MAX_ITEM_LIST_LENGTH: {max_len} or {fix}"
        )


def load_teacher(config, dataset):
    """The frozen SASRec teacher for ``dataset``: parameters frozen, module in eval mode."""
    path = config["teacher_checkpoint"]
    if not path:
        path = teacher_cache_path(config, dataset)
        if os.path.isfile(path):
            logger.info(f"teacher_checkpoint is not set: using the cached SASRec teacher {path}")
        else:
            train_teacher(config, dataset, path)
    elif not os.path.isfile(path):
        raise FileNotFoundError(
            f"teacher_checkpoint {path!r} does not exist; point it to a RecBole SASRec checkpoint "
            f"(saved/SASRec-*.pth) or leave it empty to train one"
        )
    checkpoint = load_recbole_checkpoint(path, map_location="cpu")
    check_teacher_checkpoint(checkpoint, config, dataset, path)
    teacher_config = checkpoint["config"]
    teacher_config["device"] = config["device"]
    with preserved_rng_state():
        teacher = SASRec(teacher_config, dataset)
    teacher.load_state_dict(checkpoint["state_dict"])
    teacher.requires_grad_(False)
    teacher.eval()
    teacher.checkpoint_path = path
    return teacher.to(config["device"])
