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
* ``Trainer.resume_checkpoint`` restores parameters and optimiser but neither the random streams
  (the training shuffle, sampled negatives, ``uni100`` negatives) nor ``best_valid_result``, so a
  resumed run drifts from the run it continues: checkpoints here also hold both
  (:func:`rng_state`), and resuming puts them back.
* RecBole writes a checkpoint only when validation improves, so after validations that did not
  improve the only file to resume from is the older best: the LLM trainers also write a *latest*
  checkpoint after every validation (``recbole_llmsrec.trainer.ScheduledTrainer``), and
  ``resume_checkpoint`` hands such a file to the trainer's ``resume_latest``.
* ``recbole/model/sequential_recommender/sine.py`` calls ``torch.autograd.set_detect_anomaly(True)``
  when it is imported, and importing any RecBole sequential model (SASRec included) imports it
  through the package's ``__init__``. Anomaly mode checks every gradient for NaN and records a
  traceback for every operation: a training step of a 135M LLM ran about twice as long.
  :func:`undo_recbole_anomaly_mode` imports that package once and switches the mode off again;
  it runs when this module is imported (``torch.autograd.set_detect_anomaly(True)`` after that
  still turns it on for debugging).
* Distributed runs (``nproc`` > 1) are NCCL-only in RecBole: ``Config._init_device`` asserts one
  GPU per process and ``AbstractTrainer.__init__`` passes ``device_ids=[local_rank]`` to
  ``DistributedDataParallel``, which DDP refuses for a CPU module. Our ``Config`` starts a gloo
  group without GPUs, and :class:`TrustedCheckpointMixin` wraps a CPU model without device ids.
  Every process reads the checkpoint that process 0 writes: the file name is process 0's and the
  others wait until it is written.
"""

import os
import random
import tempfile
from types import SimpleNamespace

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from recbole_llmsrec.cli import UserError


def undo_recbole_anomaly_mode():
    """Import RecBole's sequential models (which switches anomaly mode on) and switch it off."""
    import recbole.model.sequential_recommender  # noqa: F401

    torch.autograd.set_detect_anomaly(False)


undo_recbole_anomaly_mode()


class UnreadableCheckpoint(UserError, RuntimeError):
    """A checkpoint file that cannot be read (a user error: the command line shows its message alone)."""


def load_recbole_checkpoint(path, map_location="cpu"):
    """Load a checkpoint written by RecBole (or this plugin), which pickles a ``Config``.

    Only use on files the user produced or trusts: ``weights_only=False`` unpickles objects.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file {path!r} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # truncated zip, wrong format, ...
        raise UnreadableCheckpoint(
            f"checkpoint {path!r} cannot be read ({type(err).__name__}: {err}); it is corrupt or "
            f"partial, or not a PyTorch checkpoint: point the setting that names it (e.g. "
            f"resume_checkpoint) to another file"
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


def rng_state(generator=None):
    """Every random stream a training epoch draws from: Python's, numpy's, torch's (CPU and CUDA),
    and ``generator`` (the training loader's shuffle)."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "generator": generator.get_state() if generator is not None else None,
    }


def set_rng_state(state, generator=None):
    """Put back what :func:`rng_state` took."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    if generator is not None and state["generator"] is not None:
        generator.set_state(state["generator"].cpu())


_saved_checkpoints = {}  # model name -> the checkpoint this process wrote last for it
_latest_checkpoints = {}  # model name -> the latest checkpoint (written after every validation) of its run


def saved_checkpoint(model):
    """The checkpoint this process wrote last for ``model`` (None if none, or if it is gone): what an
    interrupted run can go on from with ``resume_checkpoint``."""
    path = _saved_checkpoints.get(str(model))
    return path if path and os.path.isfile(path) else None


def latest_checkpoint(model):
    """The latest checkpoint of this process's run of ``model`` (written after every validation; None if
    none, or if it is gone): where an interrupted run goes on from exactly."""
    path = _latest_checkpoints.get(str(model))
    return path if path and os.path.isfile(path) else None


def remember_checkpoint(model, path, latest=False):
    """Remember ``path`` as the best (or, with ``latest``, the latest) checkpoint of this process's run of ``model``."""
    (_latest_checkpoints if latest else _saved_checkpoints)[str(model)] = path


def own_process_state(value, config, resume_file):
    """This process's entry of ``value`` read from a checkpoint: a distributed run's random states are a
    list, one per process in rank order; anything else is everyone's."""
    if not isinstance(value, list):
        return value
    distributed = not config["single_spec"]
    if len(value) != (dist.get_world_size() if distributed else 1):
        raise ValueError(
            f"resume_checkpoint {resume_file!r} was written by {len(value)} processes; resume "
            f"it with as many (nproc, world_size)")
    return value[dist.get_rank() if distributed else 0]


class TrustedCheckpointMixin:
    """Mixed in before any RecBole trainer class: the checkpoint and distributed fixes above.

    ``evaluate(load_best_model=True)`` and ``resume_checkpoint`` load the file themselves with
    :func:`load_recbole_checkpoint`, then let RecBole do the rest unchanged. Checkpoints are written
    atomically and carry the random state, so that a resumed run continues exactly where the
    checkpoint was written.
    """

    _last_valid_result = None
    _resume_rng = None
    _train_generator = None

    def __init__(self, config, model):
        cpu_ddp = not config["single_spec"] and config["device"].type == "cpu"
        if cpu_ddp:
            # RecBole's AbstractTrainer.__init__ would give DDP a GPU id; wrap the CPU model below
            config["single_spec"] = True
        try:
            super().__init__(config, model)
        finally:
            if cpu_ddp:
                config["single_spec"] = False
        if cpu_ddp:
            self.wrap_distributed()
        if not config["single_spec"]:
            # every process saves to and reloads process 0's file
            names = [self.saved_model_file]
            dist.broadcast_object_list(names, src=0)
            self.saved_model_file = names[0]

    def wrap_distributed(self):
        """Wrap the model in DDP again: DDP fixes the parameters it synchronises (those requiring
        grad) when it wraps, so a trainer that changes them between stages calls this after."""
        if self.config["single_spec"]:
            return
        self.distributed_model = None  # drop the old wrapper and its gradient hooks first
        # a model with nothing to train (LLMSeqSim) needs no DDP, which would refuse it
        if any(param.requires_grad for param in self.model.parameters()):
            cpu = self.config["device"].type == "cpu"
            self.distributed_model = DistributedDataParallel(self.model, device_ids=None if cpu else [self.config["local_rank"]])

    def sync_grad_loss(self):
        # RecBole adds 0 * sum(p) over every parameter so that DDP sees a gradient for each; a
        # frozen LLM needs none (and summing billions of frozen weights every step is not free)
        return sum(param.sum() * 0 for param in self.model.parameters() if param.requires_grad)

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
        checkpoint = load_recbole_checkpoint(resume_file, map_location="cpu")
        for key in ("model", "dataset"):
            if str(checkpoint["config"][key]).lower() != str(self.config[key]).lower():
                raise ValueError(
                    f"resume_checkpoint {resume_file!r} was written for {key} {checkpoint['config'][key]!r}, "
                    f"this run is {self.config[key]!r}; point resume_checkpoint to a checkpoint of this "
                    f"run, or leave it empty to start from scratch"
                )
        if checkpoint.get("optimizer") is None:
            raise ValueError(
                f"resume_checkpoint {resume_file!r} holds no optimiser state (a model with nothing to "
                f"train, or a file saved without it), so training cannot continue from it"
            )
        if checkpoint.get("latest"):  # the whole state after some validation, not a best checkpoint
            if not hasattr(self, "resume_latest"):
                raise ValueError(f"resume_checkpoint {resume_file!r} is a latest checkpoint, which "
                                 f"{type(self).__name__} cannot resume; point it to the run's best checkpoint")
            self.resume_latest(checkpoint, resume_file)
            return
        self.load_model_checkpoint(resume_file)
        self.saved_model_file = resume_file
        self.start_epoch = checkpoint["epoch"] + 1
        self.cur_step = checkpoint["cur_step"]
        self.best_valid_score = checkpoint["best_valid_score"]
        self.best_valid_result = checkpoint.get("best_valid_result")
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self._resume_rng = own_process_state(checkpoint.get("rng_state"), self.config, resume_file)
        self.logger.info(f"Checkpoint loaded. Resume training from epoch {self.start_epoch}")

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        self._train_generator = getattr(train_data, "generator", None)
        if self._resume_rng is not None:
            set_rng_state(self._resume_rng, self._train_generator)
            self._resume_rng = None
        return super().fit(train_data, valid_data, verbose=verbose, saved=saved,
                           show_progress=show_progress, callback_fn=callback_fn)

    def _valid_epoch(self, valid_data, show_progress=False):
        # RecBole saves the checkpoint of a new best before it records best_valid_result
        valid_score, self._last_valid_result = super()._valid_epoch(valid_data, show_progress=show_progress)
        return valid_score, self._last_valid_result

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        """RecBole's checkpoint, written atomically with the random state. ``extra_state``: more entries
        (or replaced ones) for the file; ``process_state``: entries that each process has its own value
        of (a list in rank order in a distributed run, like ``rng_state``); ``latest``: the file is a
        latest checkpoint (remembered apart from the best for :func:`latest_checkpoint`)."""
        distributed = not self.config["single_spec"]
        saved_model_file = kwargs.pop("saved_model_file", self.saved_model_file)
        extra_state = kwargs.pop("extra_state", None) or {}
        own_states = {"rng_state": rng_state(self._train_generator), **(kwargs.pop("process_state", None) or {})}
        latest = kwargs.pop("latest", False)
        if distributed:  # every process's own random streams, so that each resumes its own
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, own_states)
            own_states = {key: [states[key] for states in gathered] for key in own_states}
        random_state = own_states.pop("rng_state")
        if not distributed or self.config["local_rank"] == 0:
            state = {
                "config": self.config,
                "epoch": epoch,
                "cur_step": self.cur_step,
                "best_valid_score": self.best_valid_score,
                "best_valid_result": self._last_valid_result if self._last_valid_result is not None else self.best_valid_result,
                "state_dict": self.checkpoint_state_dict(),
                "other_parameter": self.model.other_parameter(),
                "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
                "rng_state": random_state,
                **own_states,
                **extra_state,
            }
            atomic_torch_save(state, saved_model_file)
            remember_checkpoint(self.config["model"], saved_model_file, latest=latest)
            if verbose:
                self.logger.info(f"Saving current: {saved_model_file}")
        if distributed:
            dist.barrier()  # the other processes reload this file later

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
