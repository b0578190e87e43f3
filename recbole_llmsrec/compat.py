"""The named shims that let RecBole 1.2.1 run on today's stack.

RecBole 1.2.1 (the newest release) predates numpy 2, pandas 3, torch 2.6 and setuptools 81.
What we do about each break, in one place:

* numpy 2 removed ``np.float_``/``np.bool8`` (``recbole/config/configurator.py``,
  ``Config.compatibility_settings``, and the metrics): pinned ``numpy<2`` in setup.cfg.
* pandas 3 makes ``token_seq`` loading raise and in-place NaN filling a no-op
  (``recbole/data/dataset/dataset.py``, ``_load_feat`` / ``_fill_nan``): pinned ``pandas<3``.
* ray 2.6.3 imports ``pkg_resources`` (gone from setuptools >= 81) and is imported only by
  ``recbole/quick_start/quick_start.py`` (``from ray import tune``): we never import
  ``recbole.quick_start``; RecBole is installed with ``--no-deps`` so ray is never installed.
* torch >= 2.6 loads checkpoints with ``weights_only=True`` by default, but RecBole pickles its
  ``Config`` into every checkpoint (``recbole/trainer/trainer.py``, ``Trainer.evaluate`` line
  ``checkpoint = torch.load(checkpoint_file, map_location=self.device)`` and
  ``Trainer.resume_checkpoint``): :class:`TrustedCheckpointMixin` below loads RecBole's own
  checkpoints with ``weights_only=False``.
* hyperopt >= 0.2.7 samples with ``numpy.random.Generator.integers``, but RecBole's exhaustive
  search hands it a legacy ``RandomState`` (``recbole/trainer/hyper_tuning.py``,
  ``exhaustive_search`` line ``rng = np.random.RandomState(seed)``), and ``plot_hyper`` uses
  ``np.str`` (removed in numpy 1.24): :func:`recbole_hyper_tuning` gives that module a numpy whose
  ``random.RandomState`` makes a ``Generator`` and whose ``str`` is ``str``.
* ``Trainer._save_checkpoint`` writes in place, so a run killed mid-write leaves a truncated file:
  :func:`atomic_torch_save` writes to a temporary file and renames it.
"""

import os
import tempfile
from types import SimpleNamespace

import numpy as np
import torch


def load_recbole_checkpoint(path, map_location="cpu"):
    """Load a checkpoint written by RecBole (or this plugin), which pickles a ``Config``.

    Only use on files the user produced or trusts: ``weights_only=False`` unpickles objects.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file {path!r} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # truncated zip, wrong format, ...
        raise RuntimeError(
            f"checkpoint {path!r} cannot be read ({type(err).__name__}: {err}); it is corrupt or "
            f"partial. Delete it and train again, or point the setting to another file."
        ) from err


def atomic_torch_save(obj, path):
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pth", dir=folder)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


class TrustedCheckpointMixin:
    """Mixed in before any RecBole trainer class: the torch>=2.6 ``weights_only`` fix.

    ``evaluate(load_best_model=True)`` and ``resume_checkpoint`` load the file themselves with
    :func:`load_recbole_checkpoint`, then let RecBole do the rest unchanged.
    """

    def load_model_checkpoint(self, checkpoint_file):
        checkpoint = load_recbole_checkpoint(checkpoint_file, map_location=self.device)
        self.model.load_state_dict(checkpoint["state_dict"])
        self.model.load_other_parameter(checkpoint.get("other_parameter"))
        self.logger.info(f"Loading model structure and parameters from {checkpoint_file}")
        return checkpoint

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if eval_data and load_best_model:
            self.load_model_checkpoint(model_file or self.saved_model_file)
        return super().evaluate(
            eval_data, load_best_model=False, model_file=None, show_progress=show_progress
        )

    def resume_checkpoint(self, resume_file):
        resume_file = str(resume_file)
        checkpoint = self.load_model_checkpoint(resume_file)
        if checkpoint["config"]["model"].lower() != self.config["model"].lower():
            raise ValueError(
                f"checkpoint {resume_file!r} belongs to model {checkpoint['config']['model']}, "
                f"not {self.config['model']}"
            )
        self.saved_model_file = resume_file
        self.start_epoch = checkpoint["epoch"] + 1
        self.cur_step = checkpoint["cur_step"]
        self.best_valid_score = checkpoint["best_valid_score"]
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.logger.info(f"Checkpoint loaded. Resume training from epoch {self.start_epoch}")

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        if not self.config["single_spec"] and self.config["local_rank"] != 0:
            return
        saved_model_file = kwargs.pop("saved_model_file", self.saved_model_file)
        state = {
            "config": self.config,
            "epoch": epoch,
            "cur_step": self.cur_step,
            "best_valid_score": self.best_valid_score,
            "state_dict": self.checkpoint_state_dict(),
            "other_parameter": self.model.other_parameter(),
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
        }
        atomic_torch_save(state, saved_model_file)
        if verbose:
            self.logger.info(f"Saving current: {saved_model_file}")

    def checkpoint_state_dict(self):
        return self.model.state_dict()


_trusted_classes = {}


def trusted_trainer(trainer_class):
    """RecBole's ``trainer_class`` with :class:`TrustedCheckpointMixin` in front (cached)."""
    if issubclass(trainer_class, TrustedCheckpointMixin):
        return trainer_class
    if trainer_class not in _trusted_classes:
        _trusted_classes[trainer_class] = type(
            trainer_class.__name__, (TrustedCheckpointMixin, trainer_class), {}
        )
    return _trusted_classes[trainer_class]


class _NumpyForHyperTuning:
    """numpy as ``recbole.trainer.hyper_tuning`` expects it (see the module docstring)."""

    random = SimpleNamespace(RandomState=np.random.default_rng)
    str = str

    def __getattr__(self, name):
        return getattr(np, name)


def recbole_hyper_tuning():
    """RecBole's ``hyper_tuning`` module, with the hyperopt/numpy shim applied (once)."""
    from recbole.trainer import hyper_tuning

    if not isinstance(hyper_tuning.np, _NumpyForHyperTuning):
        hyper_tuning.np = _NumpyForHyperTuning()
    return hyper_tuning
