"""The frozen CF-SRec teacher: a RecBole SASRec, loaded from a checkpoint or trained once and cached.

``teacher_checkpoint`` names a RecBole SASRec checkpoint. When it is empty, the teacher is trained
with RecBole's own SASRec and trainer on the same dataset and split (training part; validation
for early stopping), cached under ``<checkpoint_dir>/teacher/`` under a key of every setting that
changes it, and reused by later runs. Its training writes a checkpoint at every new best
validation to ``<cache path>.partial``; a run that was interrupted (Ctrl-C, a killed process) leaves
it there, and the next run with the same settings resumes from it instead of starting over. The
finished teacher is moved to the cache path.
"""

import contextlib
import hashlib
import json
import logging
import os
import random
import time

import numpy as np
import torch
from recbole.model.sequential_recommender.sasrec import SASRec
from recbole.utils import init_seed

from recbole_llmsrec.compat import UnreadableCheckpoint, atomic_torch_save, load_recbole_checkpoint
from recbole_llmsrec.config import Config
from recbole_llmsrec.data import create_dataset, data_preparation
from recbole_llmsrec.trainer import duration
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


def _loads_user_rows(config):
    """Whether RecBole reads a ``.user`` file for this run (load_col names it, or loads every file)."""
    load_col = config["load_col"]
    if isinstance(load_col, dict):
        return "user" in load_col
    return os.path.isfile(os.path.join(config["data_path"], f"{config['dataset']}.user"))


def teacher_cache_path(config, dataset):
    data = _dataset_settings(config)
    if data.get("eval_neg_exclude") == "recbole":
        del data["eval_neg_exclude"]  # teachers cached before the key existed were validated this way
    if data.get("filter_inter_by_user_or_item") is False and not _loads_user_rows(config):
        # without .user rows the setting decides only whether items without a .item row stay, and
        # those change the item fingerprint below: keep the key of teachers cached with True
        data["filter_inter_by_user_or_item"] = True
    settings = {
        "dataset": config["dataset"],
        "data": data,
        "teacher": config["teacher_config"],
        "items": item_fingerprint(dataset),
    }
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return os.path.join(config["checkpoint_dir"], "teacher", f"SASRec-{config['dataset']}-{digest}.pth")


def partial_teacher_path(path):
    """Where the training of the teacher cached at ``path`` keeps its best checkpoint until it ends."""
    return f"{path}.partial"


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


class _TeacherProgress:
    """Mixed in before the teacher's trainer: after its first epoch (training and validation), logs
    how long the remaining epochs would take at that pace."""

    _clock = None

    def _train_epoch(self, train_data, epoch_idx, *args, **kwargs):
        now = time.time()
        if self._clock is None:
            self._clock = (now, epoch_idx)
        elif self._clock[1] is not None:
            began, first = self._clock
            per_epoch = (now - began) / max(1, epoch_idx - first)
            left = self.epochs - epoch_idx
            logger.info(
                f"SASRec teacher: one epoch takes {duration(per_epoch)} with its validation; the {left} "
                f"epochs left at most would take about {duration(per_epoch * left)} (early stopping after "
                f"{self.stopping_step} validations without improvement usually ends it sooner)"
            )
            self._clock = (began, None)
        return super()._train_epoch(train_data, epoch_idx, *args, **kwargs)


def _teacher_config(config):
    """The teacher's RecBole configuration: the student's data and split, ``teacher_config`` on top."""
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
    return TeacherConfig(model="SASRec", dataset=config["dataset"], config_dict=overrides)


def _teacher_trainer(teacher_config, train_data):
    init_seed(teacher_config["seed"], teacher_config["reproducibility"])
    model = SASRec(teacher_config, train_data._dataset).to(teacher_config["device"])
    trainer_class = get_trainer(teacher_config["MODEL_TYPE"], "SASRec")
    return type(f"Teacher{trainer_class.__name__}", (_TeacherProgress, trainer_class), {})(teacher_config, model)


def train_teacher(config, dataset, path):
    """Train RecBole's SASRec with ``teacher_config`` on the same data and split; save to ``path``.

    The best checkpoint so far is kept at :func:`partial_teacher_path` while training; if one is
    there already (an interrupted run with the same settings), training resumes from it.
    """
    teacher_config = _teacher_config(config)
    partial = partial_teacher_path(path)
    logger.info(
        f"teacher_checkpoint is not set: training the SASRec teacher on {config['dataset']} (up to "
        f"{teacher_config['epochs']} epochs, early stopping after {teacher_config['stopping_step']} validations "
        f"without improvement; teacher_config {config['teacher_config']}); it is cached at {path} for later runs. "
        f"An interrupted training resumes at the next run; for a quick first look, set a few teacher epochs "
        f"(--teacher_config=\"{{'epochs': 5}}\")"
    )
    with preserved_rng_state():
        init_seed(teacher_config["seed"], teacher_config["reproducibility"])
        teacher_dataset = create_dataset(teacher_config)
        if item_fingerprint(teacher_dataset) != item_fingerprint(dataset):
            raise RuntimeError("the teacher's dataset maps item ids differently from the student's")
        train_data, valid_data, _ = data_preparation(teacher_config, teacher_dataset)
        trainer = _teacher_trainer(teacher_config, train_data)
        if os.path.isfile(partial):
            try:
                trainer.resume_checkpoint(partial)
            except (RuntimeError, ValueError, KeyError) as err:
                logger.warning(f"cannot resume the interrupted SASRec teacher training from {partial} ({err}); "
                               f"training it from the start")
                trainer = _teacher_trainer(teacher_config, train_data)
            else:
                logger.info(
                    f"resuming the interrupted SASRec teacher training from {partial}: its best epoch so far is "
                    f"{trainer.start_epoch - 1} (valid {teacher_config['valid_metric']} = "
                    f"{trainer.best_valid_score:.4f}); going on at epoch {trainer.start_epoch}"
                )
        trainer.saved_model_file = partial
        try:
            best_score, _ = trainer.fit(
                train_data, valid_data, saved=True, show_progress=teacher_config["show_progress"])
        except KeyboardInterrupt:
            if os.path.isfile(partial):
                logger.warning(f"SASRec teacher training interrupted: its best epoch so far is kept in {partial}, "
                               f"and the next run with the same settings resumes from it")
            raise
    checkpoint = load_recbole_checkpoint(partial)
    checkpoint["item_fingerprint"] = item_fingerprint(dataset)
    atomic_torch_save(checkpoint, path)
    os.remove(partial)
    logger.info(f"SASRec teacher trained (best valid {teacher_config['valid_metric']} = {best_score:.4f})")


USER_FIX = ("set teacher_checkpoint to a RecBole SASRec checkpoint trained on this dataset "
            "(saved/SASRec-*.pth), or leave it empty to train one")


def _cache_fix(path):
    return f"delete {path} and run again to train a new teacher, or set teacher_checkpoint"


def check_teacher_checkpoint(checkpoint, config, dataset, path, fix=USER_FIX):
    """Refuse a checkpoint that is not a SASRec of this dataset, item set and sequence length."""
    if (not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict)
            or "config" not in checkpoint):
        raise ValueError(f"teacher checkpoint {path} is not a RecBole checkpoint; {fix}")
    ckpt_config = checkpoint["config"]
    if ckpt_config["model"] != "SASRec":
        raise ValueError(f"teacher checkpoint {path} holds {ckpt_config['model']}, not SASRec; {fix}")
    if ckpt_config["dataset"] != config["dataset"]:
        raise ValueError(
            f"teacher checkpoint {path} was trained on dataset {ckpt_config['dataset']!r}, this run "
            f"uses {config['dataset']!r}; {fix}"
        )
    state = checkpoint["state_dict"]
    if "item_embedding.weight" not in state or "position_embedding.weight" not in state:
        raise ValueError(f"teacher checkpoint {path} has no SASRec item or position embedding; {fix}")
    n_items = state["item_embedding.weight"].shape[0]
    if n_items != dataset.item_num:
        raise ValueError(
            f"teacher checkpoint {path} knows {n_items} item ids, this dataset has "
            f"{dataset.item_num} (different filtering?); {fix}"
        )
    fingerprint = checkpoint.get("item_fingerprint")
    if fingerprint is not None and fingerprint != item_fingerprint(dataset):
        raise ValueError(f"teacher checkpoint {path} maps item ids differently from this dataset; {fix}")
    max_len = state["position_embedding.weight"].shape[0]
    if max_len != config["MAX_ITEM_LIST_LENGTH"]:
        raise ValueError(
            f"teacher checkpoint {path} has MAX_ITEM_LIST_LENGTH {max_len}, this run uses "
            f"{config['MAX_ITEM_LIST_LENGTH']}; set MAX_ITEM_LIST_LENGTH: {max_len} or {fix}"
        )


def _read_teacher(path, user_given):
    """The checkpoint at ``path``: ``teacher_checkpoint`` (``user_given``) or the plugin's cache."""
    try:
        return load_recbole_checkpoint(path, map_location="cpu")
    except RuntimeError as err:
        cause = err.__cause__ or err
        if user_given:
            raise UnreadableCheckpoint(
                f"teacher_checkpoint {path!r} cannot be read ({type(cause).__name__}: {cause}): it is corrupt or "
                f"partial, or not a PyTorch checkpoint; {USER_FIX}"
            ) from cause
        raise UnreadableCheckpoint(
            f"the cached SASRec teacher {path} cannot be read ({type(cause).__name__}: {cause}): it is corrupt or "
            f"partial; {_cache_fix(path)}"
        ) from cause


def _teacher_file(config, dataset):
    """``(path, user_given)``: ``teacher_checkpoint`` if set (it must exist), else the cache path."""
    path = config["teacher_checkpoint"]
    if not path:
        return teacher_cache_path(config, dataset), False
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"teacher_checkpoint {path!r} does not exist; point it to a RecBole SASRec checkpoint "
            f"(saved/SASRec-*.pth) or leave it empty to train one"
        )
    return path, True


def _check_positive(settings, key, name, whole=True):
    value = settings.get(key)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    if whole:
        ok = ok and value == int(value)
    if not ok:
        kind = "a whole number >= 1" if whole else "a number > 0"
        raise ValueError(f"{name} must be {kind}, got {value!r}; set it in teacher_config (properties/overall.yaml, "
                         f"or e.g. --teacher_config=\"{{'{key}': ...}}\")")


def check_teacher_settings(config, dataset):
    """What can be checked about the teacher before anything trains: ``teacher_checkpoint`` (or the
    cached teacher) readable and matching ``dataset``, or, for a teacher still to be trained, the
    ``teacher_config`` numbers."""
    path, user_given = _teacher_file(config, dataset)
    if user_given or os.path.isfile(path):
        fix = USER_FIX if user_given else _cache_fix(path)
        check_teacher_checkpoint(_read_teacher(path, user_given), config, dataset, path, fix)
        return
    settings = config["teacher_config"]
    if not isinstance(settings, dict):
        raise ValueError(f"teacher_config must be a dict of RecBole SASRec settings, got {settings!r}")
    for key in ("epochs", "train_batch_size", "stopping_step", "eval_step"):
        if key in settings:
            _check_positive(settings, key, f"teacher_config {key}")
    if "learning_rate" in settings:
        _check_positive(settings, "learning_rate", "teacher_config learning_rate", whole=False)


def load_teacher(config, dataset):
    """The frozen SASRec teacher for ``dataset``: parameters frozen, module in eval mode."""
    path, user_given = _teacher_file(config, dataset)
    if not user_given:
        if os.path.isfile(path):
            logger.info(f"teacher_checkpoint is not set: using the cached SASRec teacher {path}")
        else:
            train_teacher(config, dataset, path)
    checkpoint = _read_teacher(path, user_given)
    check_teacher_checkpoint(checkpoint, config, dataset, path, USER_FIX if user_given else _cache_fix(path))
    teacher_config = checkpoint["config"]
    teacher_config["device"] = config["device"]
    with preserved_rng_state():
        teacher = SASRec(teacher_config, dataset)
    teacher.load_state_dict(checkpoint["state_dict"])
    teacher.requires_grad_(False)
    teacher.eval()
    teacher.checkpoint_path = path
    return teacher.to(config["device"])
