"""Trainers for the LLM models: RecBole's ``Trainer``, saving and loading trained parameters only,
with the training schedule settings of :class:`ScheduledTrainer`.

A frozen LLM is never written into a checkpoint; the optimiser sees only trainable parameters.
Looked up by ``recbole_llmsrec.utils.get_trainer`` as ``<Model>Trainer``.
"""

import math
import os
from collections import namedtuple
from functools import partial
from time import time

from recbole.trainer import Trainer
from recbole.utils import dict2str, early_stopping, set_color
from torch.nn.utils import clip_grad_norm_
from torch.optim.lr_scheduler import ExponentialLR

from recbole_llmsrec.cli import UserError
from recbole_llmsrec.compat import (
    TrustedCheckpointMixin, load_recbole_checkpoint, own_process_state, remember_checkpoint, rng_state, set_rng_state,
)
from recbole_llmsrec.config import is_count, is_number

LR_SCHEDULES = ("constant", "linear", "cosine")

ScheduleSettings = namedtuple("ScheduleSettings", [
    "adam_betas", "valid_per_epoch", "lr_decay_per_valid", "lr_schedule", "lr_warmup_ratio", "lr_min_ratio",
    "gradient_accumulation_steps"])


def schedule_settings(config):
    """The training schedule settings of ``config`` (``properties/overall.yaml``), checked, as a
    :class:`ScheduleSettings`; a key left empty or absent has its default (RecBole's schedule)."""

    def setting(key, default=None):
        value = config[key] if key in config else None
        return default if value is None else value

    betas = setting("adam_betas")
    if betas is not None:
        if not (isinstance(betas, (list, tuple)) and len(betas) == 2
                and all(is_number(b) and 0.0 <= b < 1.0 for b in betas)):
            raise ValueError(f"adam_betas must be two numbers in [0, 1), e.g. [0.9, 0.98], or empty; got {betas!r}")
        betas = tuple(float(b) for b in betas)
    per_epoch = setting("valid_per_epoch", 1)
    if not (is_number(per_epoch) and per_epoch == int(per_epoch) and per_epoch >= 1):
        raise ValueError(f"valid_per_epoch must be a whole number >= 1 (1: RecBole's eval_step cadence); got {per_epoch!r}")
    gamma = setting("lr_decay_per_valid")
    if gamma is not None and not (is_number(gamma) and gamma > 0):
        raise ValueError(f"lr_decay_per_valid must be a number > 0 (e.g. 0.95), or empty for a constant "
                         f"learning rate; got {gamma!r}")
    shape = setting("lr_schedule", "constant")
    if shape not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}; got {shape!r}")
    warmup = setting("lr_warmup_ratio", 0.0)
    if not (is_number(warmup) and 0.0 <= warmup < 1.0):
        raise ValueError(f"lr_warmup_ratio must be a number in [0, 1): the share of a run's optimiser steps that "
                         f"warm the learning rate up (e.g. 0.05; 0: none); got {warmup!r}")
    floor = setting("lr_min_ratio", 0.0)
    if not (is_number(floor) and 0.0 <= floor <= 1.0):
        raise ValueError(f"lr_min_ratio must be a number in [0, 1]: the lowest learning rate as a share of "
                         f"learning_rate (e.g. 0.01); got {floor!r}")
    accumulation = setting("gradient_accumulation_steps", 1)
    if not is_count(accumulation):
        raise ValueError(f"gradient_accumulation_steps must be a whole number >= 1 (training batches per "
                         f"optimiser step; 1: one step per batch, as RecBole); got {accumulation!r}")
    if gamma is not None and (shape != "constant" or warmup > 0):
        raise ValueError(
            f"lr_decay_per_valid ({gamma}) and lr_schedule: {shape} with lr_warmup_ratio: {warmup} both set the "
            f"learning rate; use one: leave lr_decay_per_valid empty for the per-step schedule, or set "
            f"lr_schedule: constant and lr_warmup_ratio: 0 to decay per validation")
    return ScheduleSettings(betas, int(per_epoch), None if gamma is None else float(gamma), shape, float(warmup),
                            float(floor), accumulation)


def save_latest_setting(config):
    """``save_latest_checkpoint`` of ``config``, checked (True when empty or absent)."""
    value = config["save_latest_checkpoint"] if "save_latest_checkpoint" in config else None
    if value is None:
        return True
    if not isinstance(value, bool):
        raise ValueError(f"save_latest_checkpoint must be True or False (write <saved_model_file stem>-latest.pth "
                         f"after every validation, to resume from); got {value!r}")
    return value


def latest_checkpoint_file(saved_model_file):
    """The latest checkpoint written beside the best one ``saved_model_file``: ``<stem>-latest.pth``."""
    stem = saved_model_file[: -len(".pth")] if saved_model_file.endswith(".pth") else saved_model_file
    return f"{stem}-latest.pth"


def latest_best_file(checkpoint, resume_file):
    """The best checkpoint of the run whose latest checkpoint ``checkpoint`` (read from ``resume_file``)
    is: where it was written, or else next to ``resume_file`` (the files moved together). A
    :class:`UserError` naming the file and the fix if it is in neither place."""
    best = checkpoint["best_checkpoint"]
    beside = os.path.join(os.path.dirname(os.path.abspath(resume_file)), os.path.basename(best))
    for path in (best, beside):
        if os.path.isfile(path):
            return path
    raise UserError(
        f"resume_checkpoint {resume_file!r} is the latest state of a run whose best checkpoint {best!r} is "
        f"missing (nor is it next to {os.path.basename(resume_file)!r}); the run goes on from the latest state "
        f"but its test loads the best: put {os.path.basename(best)!r} back where it was or next to the latest "
        f"file, or set resume_checkpoint to a best checkpoint to go on from that one")


class StepSchedule:
    """A learning rate set before every optimiser step from the step's place in the run.

    With T optimiser steps in the run (``fit``: epochs x optimiser steps per epoch), W =
    floor(``warmup_ratio`` x T) warm-up steps, floor m = ``min_ratio`` and ``learning_rate`` lr,
    the step s (0, 1, ..., T - 1) trains at

    * s < W: lr x (m + (1 - m) s / W), a linear warm-up from m x lr;
    * s >= W, with p = (s - W) / (T - W): constant lr; linear lr x (m + (1 - m)(1 - p));
      cosine lr x (m + (1 - m)(1 + cos(pi p)) / 2).

    Each parameter group's lr is its own ``base_lrs`` entry times that factor. ``state_dict``
    (kept inside the optimiser's, see ``ScheduledTrainer._keep_schedule_with``) records the step.
    """

    def __init__(self, optimizer, shape, warmup_ratio, min_ratio):
        self.optimizer = optimizer
        self.shape, self.warmup_ratio, self.min_ratio = shape, warmup_ratio, min_ratio
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.total_steps = None  # set by the trainer's fit, once the batches per epoch are known
        self.step_index = 0

    def warmup_steps(self):
        return int(self.warmup_ratio * self.total_steps)

    def factor(self, step):
        """The learning rate of optimiser step ``step`` as a share of ``learning_rate``."""
        floor = self.min_ratio
        warmup = self.warmup_steps()
        if step < warmup:
            return floor + (1.0 - floor) * step / warmup
        progress = min(1.0, (step - warmup) / max(1, self.total_steps - warmup))
        if self.shape == "linear":
            return floor + (1.0 - floor) * (1.0 - progress)
        if self.shape == "cosine":
            return floor + (1.0 - floor) * (1.0 + math.cos(math.pi * progress)) / 2.0
        return 1.0

    def seek(self, step):
        """Set every group's learning rate to that of optimiser step ``step``."""
        self.step_index = int(step)
        factor = self.factor(self.step_index)
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base_lr * factor

    def state_dict(self):
        return {"lr_schedule": self.shape, "lr_warmup_ratio": self.warmup_ratio, "lr_min_ratio": self.min_ratio,
                "total_steps": self.total_steps, "step": self.step_index, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state):
        # this run's settings and learning rate win; the step says where the saved run was
        self.step_index = int(state["step"])


class _AccumulatedSteps:
    """The optimiser as RecBole's epoch loop sees it with ``gradient_accumulation_steps`` k: its
    ``zero_grad`` and ``step`` act once per group of k batches (the last group of an epoch may be
    shorter), and the step uses the mean of the group's batch gradients, clipped after averaging
    when ``clip_grad_norm`` is set. Everything else is the optimiser's. ``batches``: the batches of
    the epoch trained before (a run resumed between its parts)."""

    def __init__(self, optimizer, k, n_batches, clip_grad_norm, batches=0):
        self._optimizer = optimizer
        self._k, self._n_batches, self._clip = k, n_batches, clip_grad_norm
        self._batches = batches  # batches whose step() was called in this epoch

    def __getattr__(self, name):
        if name == "_optimizer":  # not set yet
            raise AttributeError(name)
        return getattr(self._optimizer, name)

    def zero_grad(self, set_to_none=True):
        if self._batches % self._k == 0:  # the first batch of a group
            self._optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, closure=None):
        self._batches += 1
        if self._batches % self._k and self._batches != self._n_batches:
            return None
        size = (self._batches - 1) % self._k + 1  # batches in this group
        params = [p for group in self._optimizer.param_groups for p in group["params"] if p.grad is not None]
        if size > 1:
            for param in params:
                param.grad.div_(size)
        if self._clip:
            clip_grad_norm_(params, **self._clip)
        return self._optimizer.step(closure)


def duration(seconds):
    """``seconds`` as a reader would say it: "8.5 s", "95 s", "25 min", "12.5 h"."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def training_estimate(seconds_per_batch, n_batches, epochs_left, valid_seconds=None, valid_per_epoch=1):
    """Seconds of one epoch and of ``epochs_left`` epochs at ``seconds_per_batch`` for each of the
    ``n_batches`` of an epoch, plus ``valid_per_epoch`` validations (a fraction with ``eval_step`` > 1)
    of ``valid_seconds`` each per epoch (training only when None)."""
    epoch = seconds_per_batch * n_batches
    if valid_seconds is not None:
        epoch += valid_per_epoch * valid_seconds
    return epoch, epoch * epochs_left


class _BatchHook:
    """A training loader whose iteration calls ``after_batch(batches_done)`` once a batch has been
    trained on (when the next one is asked for), and ends the epoch when that returns True.
    Everything else (``shuffle``, ``sampler``, ...) is the loader's. With ``skip`` the first
    ``skip`` batches are drawn but not given out (trained before a run was resumed), then
    ``resumed()`` is called, and ``batches_done`` counts them."""

    def __init__(self, loader, after_batch, skip=0, resumed=None):
        self._loader = loader
        self._after_batch = after_batch
        self._skip, self._resumed = skip, resumed

    def __len__(self):
        return len(self._loader) - self._skip

    def __getattr__(self, name):
        if name == "_loader":  # not set yet (e.g. while unpickling)
            raise AttributeError(name)
        return getattr(self._loader, name)

    def __iter__(self):
        batches = iter(self._loader)
        for _ in range(self._skip):
            next(batches)
        if self._resumed is not None:
            self._resumed()
        for done, batch in enumerate(batches, start=self._skip + 1):
            yield batch
            if self._after_batch(done):
                return


class _FitRun:
    """What one ``fit`` call keeps between its validations: its arguments, whether early stopping
    ended it, the global step, and the training since the previous validation (batches, the sum of
    each loss term, when it began), and the training time estimate once logged."""

    def __init__(self, valid_data, verbose, saved, show_progress, callback_fn, step):
        self.valid_data, self.verbose, self.saved = valid_data, verbose, saved
        self.show_progress, self.callback_fn = show_progress, callback_fn
        self.step = step  # optimiser steps (training batches) since the first epoch
        self.stopped = False
        self.validations = []  # each validation's epoch label, in order
        self.inner_valid_seconds = 0.0  # validating inside the current epoch's _train_epoch
        self.seconds_per_batch = None  # measured over the first batches (verbose only)
        self.resume_position = None  # where in its epoch a run resumed from a latest checkpoint goes on
        # the current epoch: random state before its batches were drawn (for a latest checkpoint
        # written between its parts), its loss so far as RecBole sums it, when it began, and its training
        # seconds before a resumed run
        self.epoch_rng, self.epoch_loss, self.epoch_began, self.epoch_seconds_before = None, None, time(), 0.0
        self.new_interval()

    def new_interval(self):
        self.began = time()
        self.batches = 0
        self.loss_sums = None

    def record(self, losses):
        terms = losses if isinstance(losses, tuple) else (losses,)
        values = [float(term.item() if hasattr(term, "item") else term) for term in terms]
        self.loss_sums = values if self.loss_sums is None else [a + b for a, b in zip(self.loss_sums, values)]
        # RecBole's sum of the epoch's losses, the same additions in the same order
        if isinstance(losses, tuple):
            self.epoch_loss = tuple(values) if self.epoch_loss is None else tuple(map(sum, zip(self.epoch_loss, values)))
        else:
            self.epoch_loss = values[0] if self.epoch_loss is None else self.epoch_loss + values[0]
        self.batches += 1
        self.step += 1


class ScheduledTrainer(Trainer):
    """RecBole's ``Trainer`` with the schedule settings of ``properties/overall.yaml``; their
    defaults (empty, 1, empty, constant, 0, 0, 1) give RecBole's training, numbers included:

    * ``adam_betas``: the betas of Adam and AdamW (``learner`` adam or adamw).
    * ``valid_per_epoch`` k: the batches of every epoch are split into k near-equal parts (part i
      ends after ``i * n // k`` of the n batches; fewer parts when n < k) and a validation follows
      each part, with RecBole's early stopping (``stopping_step`` counts validations), checkpoint of
      a new best, logging and ``callback_fn(epoch_idx, valid_score)``. ``eval_step`` keeps its
      meaning for k = 1; with k > 1 every epoch is validated (``eval_step`` <= 0 still turns
      validation off). ``_train_epoch`` is still called once per epoch: the validations between parts run
      from inside it (``_BatchHook``), the one at the end of an epoch after it, as in RecBole.
    * ``lr_decay_per_valid`` gamma: every validation multiplies each parameter group's learning
      rate by gamma (``ExponentialLR`` stepped per validation, ``self.lr_scheduler``; one per
      optimiser, so a trainer that builds an optimiser per stage has a schedule per stage). Its
      state travels inside the optimiser's state dict (key ``lr_scheduler``), so checkpoints hold
      it and ``resume_checkpoint`` puts it back with the optimiser. A checkpoint written after a
      validation already holds the decay of that validation: a resumed run goes on with the
      learning rate the uninterrupted run had next.
    * ``lr_schedule`` (constant, linear or cosine), ``lr_warmup_ratio`` and ``lr_min_ratio``: a
      learning rate per optimiser step (:class:`StepSchedule`, ``self.lr_scheduler``), over the
      T = ``epochs`` x optimiser steps per epoch of each ``fit`` (a trainer that builds an
      optimiser per stage: of each stage, over that stage's epochs). The rate of a step follows
      from its place in the run (epoch x steps per epoch + step in the epoch), so a resumed run,
      which starts at the epoch after its checkpoint, trains each step at the rate the
      uninterrupted run had there; the schedule's state also travels in the optimiser's state
      dict. It and ``lr_decay_per_valid`` exclude each other (a ValueError names both).
    * ``gradient_accumulation_steps`` k: an optimiser step every k training batches (and after the
      last batch of an epoch), on the mean of their gradients (``clip_grad_norm`` applies to that
      mean), so a step sees k x ``train_batch_size`` rows while memory holds one batch. Each batch's
      loss is still logged and recorded.

    Checkpoints and resuming: the best checkpoint (``saved_model_file``) is written at a new best
    validation (RecBole's rule) with the index of the epoch it was written in; resumed from it, a run
    starts at the next epoch (one written between parts of an epoch resumes without the rest of that
    epoch) with the patience count of the best (0). With ``save_latest_checkpoint`` (default True) every
    validation also writes the *latest* checkpoint ``<saved_model_file stem>-latest.pth`` (atomically,
    replacing the previous one): the trained parameters, the optimiser with its learning-rate schedule,
    the epoch and the batches of it trained (a validation between parts of an epoch), ``cur_step``,
    ``best_valid_score``, ``best_valid_result``, ``valid_history``, the training losses and seconds so far,
    the random states (also those from before the epoch's batches were drawn, and gradients summed so far
    with ``gradient_accumulation_steps``), and ``best_checkpoint``, the path of the run's best checkpoint.
    ``resume_checkpoint`` set to a latest checkpoint goes on exactly where it was written (the rest of a
    part-trained epoch included: its first batches are drawn again, not trained), and the resumed run's
    ``saved_model_file`` is that best checkpoint, so a resumed run that never improves still tests the
    run's best (a :class:`~recbole_llmsrec.cli.UserError` if that file is gone). A run that had already
    stopped early trains no further. The latest checkpoint stays when training ends: resume it with more
    ``epochs`` to train on; remove it when the run is done with.
    ``_train_epoch`` called outside ``fit`` is RecBole's epoch as it is (no per-step schedule, one
    step per batch).

    ``valid_history`` gets one dict per validation (JSON-serialisable): ``epoch`` (float: epochs of
    training done, 1.0 = the end of RecBole's epoch 0), ``epoch_idx`` (RecBole's epoch index),
    ``step`` (training batches so far: optimiser steps unless ``gradient_accumulation_steps`` > 1),
    ``lr`` (the learning rate of the last training step before this validation), ``valid_score``,
    ``valid_result``, ``best`` (a new best, so checkpointed), ``train_loss`` (mean loss per batch
    since the previous validation), ``train_loss_terms`` (the mean of each term a model's
    ``calculate_loss`` returns, one for a single loss), ``train_batches``, ``train_seconds``
    (training since the previous validation, validations excluded) and ``valid_seconds``. ``epoch_train_seconds`` has each epoch's training seconds, validations
    between its parts excluded.

    With ``verbose``, each ``fit`` logs an estimate of its training time after the first batches
    of its first epoch (3, fewer when a minute has passed, the epoch is shorter or a validation comes
    first), and one of training and validation together after its first validation.
    """

    def __init__(self, config, model):
        self.schedule = schedule_settings(config)
        self.adam_betas, self.valid_per_epoch, self.lr_decay_per_valid = self.schedule[:3]
        self.gradient_accumulation_steps = self.schedule.gradient_accumulation_steps
        self.save_latest = save_latest_setting(config)
        self.lr_scheduler = None
        self.valid_history = []
        self.epoch_train_seconds = []
        self._run = None  # the fit in progress
        self._resume_position = None  # resumed from a latest checkpoint written between parts of an epoch
        self._resumed_latest = False  # the next fit goes on from a latest checkpoint
        super().__init__(config, model)
        if self.gradient_accumulation_steps > 1 and self.enable_scaler:
            raise ValueError("gradient_accumulation_steps > 1 does not work with enable_scaler (RecBole's gradient "
                             "scaler steps after every batch): set enable_scaler: False, or gradient_accumulation_steps: 1")

    # ---- optimiser and learning-rate schedule -------------------------------------------------

    def _build_optimizer(self, **kwargs):
        """RecBole's optimiser (``learner``, ``learning_rate``, ``weight_decay``) with ``adam_betas``;
        sets ``self.lr_scheduler`` to its schedule: an ``ExponentialLR`` stepped per validation
        (``lr_decay_per_valid``), a :class:`StepSchedule` (``lr_schedule`` other than constant, or a
        warm-up), or None for a constant learning rate."""
        learner = kwargs.get("learner", self.learner)
        optimizer = super()._build_optimizer(**kwargs)
        if self.adam_betas is not None:
            if learner.lower() in ("adam", "adamw"):
                # what Adam(..., betas=) stores: the defaults and every group read at each step
                optimizer.defaults["betas"] = self.adam_betas
                for group in optimizer.param_groups:
                    group["betas"] = self.adam_betas
            else:
                self.logger.warning(f"adam_betas applies to learner adam or adamw only; ignored for {learner}")
        scheduler = None
        if self.lr_decay_per_valid is not None:
            scheduler = ExponentialLR(optimizer, gamma=self.lr_decay_per_valid)
        elif self.schedule.lr_schedule != "constant" or self.schedule.lr_warmup_ratio > 0:
            scheduler = StepSchedule(optimizer, self.schedule.lr_schedule, self.schedule.lr_warmup_ratio,
                                     self.schedule.lr_min_ratio)
        self._keep_schedule_with(optimizer, scheduler)
        self.lr_scheduler = scheduler
        return optimizer

    def _keep_schedule_with(self, optimizer, scheduler):
        """Make ``scheduler``'s state part of ``optimizer``'s state dict, so that every checkpoint
        (whoever writes it) holds it and loading the optimiser state puts it back."""

        def save(_, state):
            if scheduler is not None:
                state["lr_scheduler"] = scheduler.state_dict()

        def load(_, state):
            saved = state.pop("lr_scheduler", None)
            if saved is None:
                return state
            per_step = "lr_schedule" in saved  # a StepSchedule's state; else an ExponentialLR's
            if isinstance(scheduler, StepSchedule) and per_step:
                scheduler.load_state_dict(saved)  # fit then sets the rate of the step it starts at
            elif isinstance(scheduler, ExponentialLR) and not per_step:
                scheduler.load_state_dict(saved)
                scheduler.gamma = self.lr_decay_per_valid  # this run's setting wins
            else:
                loaded = ("a per-step schedule (lr_schedule, lr_warmup_ratio)" if per_step
                          else "a decay per validation (lr_decay_per_valid)")
                ours = ("lr_decay_per_valid" if isinstance(scheduler, ExponentialLR)
                        else "its own per-step schedule" if scheduler is not None else "a constant learning rate")
                self.logger.warning(
                    f"the optimiser state loaded had {loaded}, which this run does not have: it goes on with "
                    f"{ours}, from the loaded learning rate {[group['lr'] for group in state['param_groups']]}")
            return state

        optimizer.register_state_dict_post_hook(save)
        optimizer.register_load_state_dict_pre_hook(load)

    # ---- training ------------------------------------------------------------------------------

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        """RecBole's ``Trainer.fit``, the same steps in the same order, with validations between the
        parts of an epoch (``valid_per_epoch``), the learning rate decayed after each validation
        (``lr_decay_per_valid``) or set per step over this fit's epochs (``lr_schedule``), and
        ``valid_history``."""
        resumed, position = self._resumed_latest, self._resume_position
        self._resumed_latest, self._resume_position = False, None
        # resumed from a latest checkpoint, the parameters now are not the best: saved_model_file already is
        if saved and self.start_epoch >= self.epochs and not resumed:
            self._save_checkpoint(-1, verbose=verbose)
        if position is not None and position["n_batches"] != len(train_data):
            raise UserError(
                f"the latest checkpoint resumed was written after {position['batches_done']} of the "
                f"{position['n_batches']} training batches of epoch {position['epoch']}, but an epoch of this run "
                f"has {len(train_data)}: resume it with the settings it was written with (train_batch_size, "
                f"train_rows_per_user, ...)")
        self.eval_collector.data_collect(train_data)
        if self.config["train_neg_sample_args"].get("dynamic", False):
            train_data.get_model(self.model)

        step = self.start_epoch * len(train_data) + (position["batches_done"] if position else 0)
        run = self._run = _FitRun(valid_data, verbose, saved, show_progress, callback_fn, step=step)
        run.resume_position = position
        if isinstance(self.lr_scheduler, StepSchedule):
            self.lr_scheduler.total_steps = self.epochs * self._steps_per_epoch(len(train_data))
            self.lr_scheduler.seek(self.start_epoch * self._steps_per_epoch(len(train_data)))
        epochs = range(self.start_epoch, self.epochs)
        if resumed and self.eval_step > 0 and valid_data and self.cur_step > self.stopping_step:
            if verbose:  # RecBole's early stopping had ended the run the latest checkpoint is of
                self.logger.info(f"The run resumed had stopped early ({self.cur_step} validations without a new "
                                 f"best, stopping_step {self.stopping_step}): nothing more to train")
            epochs = range(0)
        try:
            for epoch_idx in epochs:
                run.inner_valid_seconds = 0.0
                start = time()
                train_loss = self._train_epoch(train_data, epoch_idx, show_progress=show_progress)
                end = time()
                self.train_loss_dict[epoch_idx] = sum(train_loss) if isinstance(train_loss, tuple) else train_loss
                self.epoch_train_seconds.append(end - start - run.inner_valid_seconds + run.epoch_seconds_before)
                if verbose:
                    self.logger.info(self._generate_train_loss_output(
                        epoch_idx, start + run.inner_valid_seconds, end, train_loss))
                self._add_train_loss_to_tensorboard(epoch_idx, train_loss)
                self.wandblogger.log_metrics(
                    {"epoch": epoch_idx, "train_loss": train_loss, "train_step": epoch_idx}, head="train")
                if run.stopped:  # early stopping between two parts of this epoch
                    break

                if self.eval_step <= 0 or not valid_data:
                    if saved:
                        self._save_checkpoint(epoch_idx, verbose=verbose)
                    continue
                if self.valid_per_epoch > 1 or (epoch_idx + 1) % self.eval_step == 0:
                    self._validate(epoch_idx, len(train_data), len(train_data))
                    if run.stopped:
                        break
        finally:
            self._run = None
        self._add_hparam_to_tensorboard(self.best_valid_score)
        return self.best_valid_score, self.best_valid_result

    def _steps_per_epoch(self, n_batches):
        """Optimiser steps in an epoch of ``n_batches`` training batches."""
        return math.ceil(n_batches / self.gradient_accumulation_steps)

    def _part_ends(self, n_batches):
        """Batch counts after which an epoch of ``n_batches`` is validated before its end."""
        k = self.valid_per_epoch
        return {n_batches * i // k for i in range(1, k)} - {0}

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        """RecBole's epoch, recording each batch's losses for ``valid_history``, setting the learning
        rate of each step (``lr_schedule``), stepping once per ``gradient_accumulation_steps`` batches,
        with ``valid_per_epoch`` > 1 validating between the parts of the epoch, and in the first
        epoch of a verbose ``fit`` logging the training time estimate."""
        if hasattr(train_data, "set_epoch"):  # training rows drawn per epoch (train_rows_per_user)
            train_data.set_epoch(epoch_idx)
        run = self._run
        if run is None:  # called outside fit: RecBole's epoch as it is
            return super()._train_epoch(train_data, epoch_idx, loss_func=loss_func, show_progress=show_progress)
        loss_func = loss_func or self.model.calculate_loss
        n_batches = len(train_data)
        k = self.gradient_accumulation_steps
        schedule = self.lr_scheduler if isinstance(self.lr_scheduler, StepSchedule) else None
        first_step = epoch_idx * self._steps_per_epoch(n_batches)
        # resumed from a latest checkpoint written between parts of this epoch: its first batches are trained
        position = run.resume_position if run.resume_position and run.resume_position["epoch"] == epoch_idx else None
        run.resume_position = None
        skip = position["batches_done"] if position else 0
        batches_begun = skip

        def recorded_loss(interaction):
            nonlocal batches_begun
            if schedule is not None:  # before this batch's optimiser step (RecBole steps after the loss)
                schedule.seek(first_step + batches_begun // k)
            batches_begun += 1
            losses = loss_func(interaction)
            run.record(losses)
            return losses

        part_ends = self._part_ends(n_batches) if self.eval_step > 0 and run.valid_data else set()
        generator = getattr(self, "_train_generator", None)  # the training shuffle's (TrustedCheckpointMixin.fit)
        run.epoch_began, run.inner_valid_seconds = time(), 0.0
        run.epoch_loss = position["epoch_loss"] if position else None
        run.epoch_seconds_before = position["epoch_seconds"] if position else 0.0
        if position:
            run.epoch_rng = position["epoch_rng_state"]
        else:  # a latest checkpoint written between this epoch's parts draws its batches again from here
            run.epoch_rng = rng_state(generator) if part_ends and run.saved and self.save_latest else None
        estimating = run.verbose and run.seconds_per_batch is None  # the first epoch of this fit
        began = time()
        if part_ends or estimating or skip:

            def after_batch(done):
                if run.seconds_per_batch is None and run.verbose:
                    seconds = time() - began
                    if done - skip >= min(3, n_batches - skip) or done in part_ends or seconds >= 60:
                        self._log_training_estimate(done - skip, n_batches, seconds)
                if done in part_ends:
                    valid_began = time()
                    self._validate(epoch_idx, done, n_batches)
                    self.model.train()  # evaluation left the model in eval mode
                    run.inner_valid_seconds += time() - valid_began
                return run.stopped

            resumed = None
            if position:
                # the batches are drawn as the epoch drew them, then the run goes on with the random state,
                # and the gradients summed so far (gradient_accumulation_steps), of the latest checkpoint
                set_rng_state(position["epoch_rng_state"], generator)
                for name, param in self.model.named_parameters():
                    grad = (position["accumulated_grads"] or {}).get(name)
                    if grad is not None:
                        param.grad = grad.to(param.device)
                resumed = partial(set_rng_state, position["rng_state"], generator)

            train_data = _BatchHook(train_data, after_batch, skip=skip, resumed=resumed)
        if k == 1:
            train_loss = super()._train_epoch(train_data, epoch_idx, loss_func=recorded_loss,
                                              show_progress=show_progress)
        else:
            # RecBole's loop calls zero_grad and step every batch: for its duration they act once per group
            optimizer, clip = self.optimizer, self.clip_grad_norm
            self.optimizer, self.clip_grad_norm = _AccumulatedSteps(optimizer, k, n_batches, clip, batches=skip), None
            try:
                train_loss = super()._train_epoch(train_data, epoch_idx, loss_func=recorded_loss,
                                                  show_progress=show_progress)
            finally:
                self.optimizer, self.clip_grad_norm = optimizer, clip
        # RecBole's sum covers the batches trained in this call; run.epoch_loss also those before a resume
        return run.epoch_loss if position else train_loss

    def _resumed_batches(self, epoch_idx):
        """Batches of epoch ``epoch_idx`` trained before this run was resumed from a latest checkpoint
        (0 unless written between the parts of that epoch)."""
        position = self._run.resume_position if self._run is not None else None
        return position["batches_done"] if position and position["epoch"] == epoch_idx else 0

    def _estimate_name(self):
        """Who the training time estimates speak of."""
        return self.config["model"]

    def _validations_per_epoch(self, n_batches):
        """Validations per epoch of ``n_batches`` (a fraction with ``eval_step`` > 1); 0 without validation."""
        if self.eval_step <= 0 or not self._run.valid_data:
            return 0
        if self.valid_per_epoch > 1:
            return len(self._part_ends(n_batches)) + 1
        return 1 / self.eval_step

    def _log_training_estimate(self, done, n_batches, seconds):
        """Log the time of an epoch and of the epochs left from the first ``done`` batches of this
        fit, trained in ``seconds``."""
        run = self._run
        run.seconds_per_batch = seconds / done
        left = self.epochs - self.start_epoch
        epoch, total = training_estimate(run.seconds_per_batch, n_batches, left)
        epochs = f"up to {left} epochs" + (f" (resumed at epoch {self.start_epoch})" if self.start_epoch else "")
        if self._validations_per_epoch(n_batches):
            after = (f" (early stopping, patience {self.stopping_step} validations, usually ends it sooner); "
                     f"the first validation will show how long one takes")
        else:
            after = "; no validation in this run"
        self.logger.info(
            f"{self._estimate_name()}: {done} of {n_batches} batches in {duration(seconds)}; estimated from them, "
            f"an epoch takes about {duration(epoch)}, {epochs} about {duration(total)} of training{after}")

    def _log_run_estimate(self, n_batches, train_seconds, train_batches, valid_seconds):
        """Log the time of the whole fit, training and validation, after its first validation."""
        if train_batches:  # the training so far measures it better than the first batches
            self._run.seconds_per_batch = train_seconds / train_batches
        per_epoch = self._validations_per_epoch(n_batches)
        left = self.epochs - self.start_epoch
        _, total = training_estimate(self._run.seconds_per_batch, n_batches, left, valid_seconds, per_epoch)
        cadence = f"valid_per_epoch {self.valid_per_epoch}" + (
            f" and eval_step {self.eval_step}" if self.valid_per_epoch == 1 and self.eval_step > 1 else "")
        self.logger.info(
            f"{self._estimate_name()}: one validation takes {duration(valid_seconds)}; with {cadence}, up to "
            f"{left} epochs: about {duration(total)} in all (training and validation)")

    def _epoch_label(self, epoch_idx, epochs_done):
        return f"{epoch_idx} ({epochs_done:.4g} epochs trained)"

    def _validate(self, epoch_idx, batches_done, n_batches):
        """One validation after ``batches_done`` of the ``n_batches`` of epoch ``epoch_idx``, with
        RecBole's bookkeeping (early stopping, a new best checkpointed, logging, callback), then the
        learning-rate decay."""
        run = self._run
        train_seconds = time() - run.began
        lr = float(self.optimizer.param_groups[0]["lr"])
        epochs_done = epoch_idx + batches_done / n_batches
        label = self._epoch_label(epoch_idx, epochs_done)
        run.validations.append(label)

        valid_start = time()
        # this epoch's training so far (validations excluded), for a latest checkpoint written between its parts
        epoch_seconds = run.epoch_seconds_before + valid_start - run.epoch_began - run.inner_valid_seconds
        valid_score, valid_result = self._valid_epoch(run.valid_data, show_progress=run.show_progress)
        valid_seconds = time() - valid_start
        if isinstance(self.lr_scheduler, ExponentialLR):  # before a checkpoint is written: it holds the next lr
            self.lr_scheduler.step()
        self.best_valid_score, self.cur_step, stop_flag, update_flag = early_stopping(
            valid_score, self.best_valid_score, self.cur_step, max_step=self.stopping_step,
            bigger=self.valid_metric_bigger)
        valid_end = time()
        if run.verbose:
            lr_note = f", {set_color('lr', 'blue')}: {lr:g}" if self.lr_scheduler is not None else ""
            self.logger.info(
                set_color(f"epoch {label} evaluating", "green") + " [" + set_color("time", "blue")
                + f": {valid_end - valid_start:.2f}s, " + set_color("valid_score", "blue")
                + f": {valid_score:f}{lr_note}]")
            self.logger.info(set_color("valid result", "blue") + ": \n" + dict2str(valid_result))
        # RecBole's x axis is the epoch; several validations per epoch need the step
        self.tensorboard.add_scalar("Vaild_score", valid_score, epoch_idx if self.valid_per_epoch == 1 else run.step)
        self.wandblogger.log_metrics({**valid_result, "valid_step": len(run.validations) - 1}, head="valid")

        if update_flag:
            if run.saved:
                self._save_checkpoint(epoch_idx, verbose=run.verbose)
            self.best_valid_result = valid_result
        if run.callback_fn:
            run.callback_fn(epoch_idx, valid_score)

        sums = run.loss_sums or []
        self.valid_history.append({
            **self._history_labels(),
            "epoch": float(epochs_done),
            "epoch_idx": int(epoch_idx),
            "step": int(run.step),
            "lr": lr,
            "valid_score": float(valid_score),
            "valid_result": {key: float(value) for key, value in valid_result.items()},
            "best": bool(update_flag),
            "train_loss": sum(sums) / run.batches if run.batches else None,
            "train_loss_terms": [total / run.batches for total in sums] if run.batches else [],
            "train_batches": int(run.batches),
            "train_seconds": float(train_seconds),
            "valid_seconds": float(valid_seconds),
        })
        if run.saved and self.save_latest:
            self._save_latest(epoch_idx, batches_done, n_batches, epoch_seconds)

        if run.verbose and len(run.validations) == 1 and run.seconds_per_batch is not None:
            self._log_run_estimate(n_batches, train_seconds, run.batches, valid_seconds)

        if stop_flag:
            before = self.valid_history[-1 - self.cur_step] if self.cur_step < len(self.valid_history) else {}
            if self.cur_step < len(run.validations):
                best = run.validations[-1 - self.cur_step]
            elif before and all(before.get(key) == value for key, value in self._history_labels().items()):
                best = self._epoch_label(before["epoch_idx"], before["epoch"])  # resumed from a latest checkpoint
            elif self.valid_per_epoch == 1:  # the best came before the resumed run: RecBole's count
                best = str(epoch_idx - self.cur_step * self.eval_step)
            else:
                best = "before this resumed run"
            if run.verbose:
                self.logger.info(f"Finished training, best eval result in epoch {best}")
            run.stopped = True
        run.new_interval()

    def _history_labels(self):
        """Entries that open each ``valid_history`` entry (a staged trainer's ``stage``)."""
        return {}

    # ---- the latest checkpoint -----------------------------------------------------------------

    def _latest_state(self):
        """What a latest checkpoint holds besides RecBole's entries, the random state and the position
        (a trainer with more to carry on adds it here)."""
        return {"best_valid_result": self.best_valid_result,
                "valid_history": [dict(entry) for entry in self.valid_history],
                "train_loss_dict": dict(self.train_loss_dict), "epoch_train_seconds": list(self.epoch_train_seconds)}

    def _save_latest(self, epoch_idx, batches_done, n_batches, epoch_seconds):
        """Write the latest checkpoint after the validation that followed ``batches_done`` of the
        ``n_batches`` of epoch ``epoch_idx`` (``epoch_seconds``: that epoch's training so far)."""
        run = self._run
        between_parts = batches_done < n_batches
        state = {"latest": True, "best_checkpoint": self.saved_model_file, "n_batches": n_batches,
                 "batches_done": batches_done if between_parts else None, **self._latest_state()}
        per_process = {}
        if between_parts:
            k = self.gradient_accumulation_steps
            grads = None
            if k > 1 and batches_done % k:  # inside a group: the gradients summed so far
                grads = {name: param.grad.detach().clone() for name, param in self.model.named_parameters()
                         if param.requires_grad and param.grad is not None}
            state.update(epoch_loss=run.epoch_loss, epoch_seconds=epoch_seconds, accumulated_grads=grads)
            per_process["epoch_rng_state"] = run.epoch_rng
        self._save_checkpoint(epoch_idx, verbose=False, saved_model_file=latest_checkpoint_file(self.saved_model_file),
                              extra_state=state, process_state=per_process, latest=True)

    def resume_latest(self, checkpoint, resume_file):
        """Go on from the latest checkpoint ``checkpoint``, read from ``resume_file``, exactly where it
        was written (``resume_checkpoint`` calls this for a latest checkpoint)."""
        best = latest_best_file(checkpoint, resume_file)
        self.load_model_checkpoint(resume_file)
        between_parts = checkpoint.get("batches_done") is not None
        rng = own_process_state(checkpoint["rng_state"], self.config, resume_file)
        position = None
        if between_parts:
            position = {key: checkpoint[key] for key in ("batches_done", "n_batches", "epoch_loss", "epoch_seconds",
                                                         "accumulated_grads")}
            position.update(epoch=checkpoint["epoch"], rng_state=rng,
                            epoch_rng_state=own_process_state(checkpoint["epoch_rng_state"], self.config, resume_file))
        self.valid_history = [dict(entry) for entry in checkpoint["valid_history"]]
        self.epoch_train_seconds = list(checkpoint["epoch_train_seconds"])
        self._resume_rng = rng
        remember_checkpoint(self.config["model"], best)
        remember_checkpoint(self.config["model"], resume_file, latest=True)
        state = {"best_checkpoint": best, "start_epoch": checkpoint["epoch"] + (0 if between_parts else 1),
                 "position": position, "optimizer": checkpoint["optimizer"],
                 **{key: checkpoint[key]
                    for key in ("cur_step", "best_valid_score", "best_valid_result", "train_loss_dict")}}
        self._restore_latest(state)
        where = (f"epoch {checkpoint['epoch']} after {position['batches_done']} of its {position['n_batches']} batches"
                 if between_parts else f"epoch {state['start_epoch']}")
        self.logger.info(f"Latest checkpoint loaded: training goes on at {where}, {state['cur_step']} validations "
                         f"since the best ({state['best_valid_score']}), kept in {best}")

    def _restore_latest(self, state):
        """Put back the training state ``state`` of a latest checkpoint (a staged trainer: when its stage begins)."""
        self._apply_latest(state)

    def _apply_latest(self, state):
        self.saved_model_file = state["best_checkpoint"]
        self.start_epoch = state["start_epoch"]
        self.cur_step = state["cur_step"]
        self.best_valid_score = state["best_valid_score"]
        self.best_valid_result = state["best_valid_result"]
        self.train_loss_dict = dict(state["train_loss_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        self._resume_position = state["position"]
        self._resumed_latest = True


class LLMTrainer(TrustedCheckpointMixin, ScheduledTrainer):
    def _build_optimizer(self, **kwargs):
        kwargs.setdefault("params", [p for p in self.model.parameters() if p.requires_grad])
        return super()._build_optimizer(**kwargs)

    def checkpoint_parameter_names(self):
        """The parameters a checkpoint holds: the trained ones."""
        return {name for name, param in self.model.named_parameters() if param.requires_grad}

    def checkpoint_mismatch_hint(self):
        return "was it written by another model or configuration?"

    def checkpoint_state_dict(self):
        names = self.checkpoint_parameter_names()
        return {name: param.detach().clone() for name, param in self.model.named_parameters() if name in names}

    def load_model_checkpoint(self, checkpoint_file):
        checkpoint = load_recbole_checkpoint(checkpoint_file, map_location=self.device)
        expected = self.checkpoint_parameter_names()
        saved = set(checkpoint["state_dict"])
        if saved != expected:
            raise ValueError(
                f"checkpoint {checkpoint_file} does not hold this model's trained parameters "
                f"(missing {sorted(expected - saved)[:5]}, unexpected {sorted(saved - expected)[:5]}); "
                f"{self.checkpoint_mismatch_hint()}"
            )
        self.model.load_state_dict(checkpoint["state_dict"], strict=False)
        self.model.load_other_parameter(checkpoint.get("other_parameter"))
        self.logger.info(f"Loading trained parameters from {checkpoint_file}")
        return checkpoint


class LLMSRecTrainer(LLMTrainer):
    pass


class StagedTrainer(LLMTrainer):
    """Trains a model in stages, one RecBole ``fit`` per stage (A-LLMRec's two stages, CoLLM's two steps).

    The model declares ``training_stages``, an ordered dict from stage name to the prefixes of the
    parameter names trained in that stage; ``set_stage(name)`` switches whatever else changes
    (which loss, which score); ``stage_settings(name)`` gives the stage's ``epochs``,
    ``learning_rate`` and an optional ``checkpoint`` to load instead of training. Each stage has its
    own early stopping and checkpoint, ``<saved_model_file stem>-<stage>.pth``, holding every
    parameter trained up to that stage; the last one is what ``evaluate`` loads. Each stage builds
    its own optimiser, so its own learning-rate schedule (``lr_decay_per_valid``, or ``lr_schedule``
    over the stage's own epochs) starting at the stage's learning rate; ``valid_history`` entries
    name their ``stage``.

    Each stage writes its own latest checkpoint, ``<stem>-<stage>-latest.pth``, naming its stage.
    Resumed from one, the stages before it are not trained again (the file holds every parameter
    trained up to its stage, and their ``valid_history`` and losses), that stage goes on where the
    file was written and the stages after it train as usual. A stage's latest checkpoint stays when
    the next stage begins: resuming from it trains the later stages again.
    """

    def __init__(self, config, model):
        self.stages = list(model.training_stages)
        self.stage = self.stages[-1]  # a trainer that only evaluates expects a finished model
        self.stage_train_loss = {}  # stage -> {epoch: loss}
        self._resume_stage = None  # the state of a latest checkpoint, put back when its stage begins
        super().__init__(config, model)

    def _estimate_name(self):
        return f"{self.config['model']} {self.stage}"

    def _trained_prefixes(self, stage):
        upto = self.stages[: self.stages.index(stage) + 1]
        return tuple(prefix for name in upto for prefix in self.model.training_stages[name])

    def checkpoint_parameter_names(self):
        prefixes = self._trained_prefixes(self.stage)
        return {name for name, _ in self.model.named_parameters() if name.startswith(prefixes)}

    def checkpoint_mismatch_hint(self):
        return (f"{self.config['model']} expected its parameters trained up to {self.stage}: point it to a "
                f"checkpoint this model wrote at the end of {self.stage}")

    def _enter_stage(self, stage):
        self.stage = stage
        trained = self.model.training_stages[stage]
        for name, param in self.model.named_parameters():
            param.requires_grad_(name.startswith(trained))
        self.model.set_stage(stage)
        self.wrap_distributed()  # DDP must synchronise this stage's parameters

    def _history_labels(self):
        return {"stage": self.stage}

    def _latest_state(self):
        return {**super()._latest_state(), "stage": self.stage,
                "stage_train_loss": {stage: dict(losses) for stage, losses in self.stage_train_loss.items()}}

    def resume_latest(self, checkpoint, resume_file):
        stage = checkpoint.get("stage")
        if stage not in self.stages:
            raise ValueError(f"resume_checkpoint {resume_file!r} is a latest checkpoint of stage {stage!r}, but "
                             f"{self.config['model']} trains {', '.join(self.stages)}; point it to a checkpoint of "
                             f"this model")
        self.stage = stage  # the parameters trained up to this stage are what the file holds
        self.stage_train_loss = {name: dict(losses) for name, losses in checkpoint["stage_train_loss"].items()}
        super().resume_latest(checkpoint, resume_file)

    def _restore_latest(self, state):
        self._resume_stage = {**state, "stage": self.stage}
        best, suffix = state["best_checkpoint"], f"-{self.stage}.pth"
        # fit names each stage's checkpoint after this: <stem>-<stage>.pth
        self.saved_model_file = best[: -len(suffix)] + ".pth" if best.endswith(suffix) else best

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        stem = self.saved_model_file[: -len(".pth")] if self.saved_model_file.endswith(".pth") else self.saved_model_file
        eval_step = self.config["eval_step"]
        result = (self.best_valid_score, self.best_valid_result)
        resume, self._resume_stage = self._resume_stage, None
        resume_at = self.stages.index(resume["stage"]) if resume else 0
        for index, stage in enumerate(self.stages):
            self._enter_stage(stage)
            settings = self.model.stage_settings(stage)
            if index < resume_at:  # trained before the latest checkpoint resumed, which holds its parameters
                self.saved_model_file = f"{stem}-{stage}.pth"
                continue
            if settings.get("checkpoint"):
                checkpoint = self.load_model_checkpoint(settings["checkpoint"])
                self.saved_model_file = settings["checkpoint"]
                result = (checkpoint.get("best_valid_score"), None)
                continue
            self.logger.info(f"{self.config['model']}: {stage} ({settings['epochs']} epochs, lr {settings['learning_rate']})")
            self.epochs = settings["epochs"]
            self.eval_step = min(eval_step, self.epochs)
            self.learning_rate = settings["learning_rate"]
            self.optimizer = self._build_optimizer()
            self.start_epoch, self.cur_step = 0, 0
            self.best_valid_score = -float("inf") if self.valid_metric_bigger else float("inf")
            self.best_valid_result = None
            self.train_loss_dict = {}
            self.saved_model_file = f"{stem}-{stage}.pth"
            if resume is not None and index == resume_at:
                self._apply_latest(resume)
            result = super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)
            self.stage_train_loss[stage] = dict(self.train_loss_dict)
            if saved and valid_data:
                self.load_model_checkpoint(self.saved_model_file)  # the next stage starts from this one's best
        return result


class TrainingFreeTrainer(TrustedCheckpointMixin, Trainer):
    """For models with nothing to train (LLMSeqSim): ``fit`` validates once, with no training loop
    and no optimiser, and writes the usual checkpoint so that the test reloads it as for any model."""

    def _build_optimizer(self, **kwargs):
        return None

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        self.logger.info(f"{self.config['model']} has nothing to train: evaluating directly")
        if valid_data:
            self.best_valid_score, self.best_valid_result = self._valid_epoch(valid_data, show_progress=show_progress)
            if verbose:
                self.logger.info(f"valid result: {self.best_valid_result}")
        else:
            self.best_valid_score, self.best_valid_result = 0.0, {}
        if saved:
            self._save_checkpoint(0, verbose=verbose)
        return self.best_valid_score, self.best_valid_result


class LLMSeqSimTrainer(TrainingFreeTrainer):
    pass


class LLMSeqPromptTrainer(LLMTrainer):
    pass


class ALLMRecTrainer(StagedTrainer):
    pass


class TALLRecTrainer(LLMTrainer):
    pass


class CoLLMTrainer(StagedTrainer):
    """CoLLM's two steps: LoRA on text-only prompts, then the mapping MLP with the LoRA frozen."""


class LLaRATrainer(LLMTrainer):
    """LLaRA's curriculum: before each training batch the model learns ``global_step / total_steps``
    (total = ``epochs`` x batches per epoch), the probability that the batch uses hybrid prompts.
    ``_train_epoch`` runs once per epoch whatever ``valid_per_epoch`` is (validations between its
    parts run from inside it), so the step count runs through the whole epoch."""

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        total_steps = self.epochs * len(train_data)
        step = epoch_idx * len(train_data) + self._resumed_batches(epoch_idx)
        loss_func = loss_func or self.model.calculate_loss

        def curriculum_loss(interaction):
            nonlocal step
            self.model.curriculum_progress = step / total_steps
            step += 1
            return loss_func(interaction)

        return super()._train_epoch(train_data, epoch_idx, loss_func=curriculum_loss, show_progress=show_progress)
