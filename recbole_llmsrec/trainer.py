"""Trainers for the LLM models: RecBole's ``Trainer``, saving and loading trained parameters only.

A frozen LLM is never written into a checkpoint; the optimiser sees only trainable parameters.
Looked up by ``recbole_llmsrec.utils.get_trainer`` as ``<Model>Trainer``.
"""

from recbole.trainer import Trainer

from recbole_llmsrec.compat import TrustedCheckpointMixin, load_recbole_checkpoint


class LLMTrainer(TrustedCheckpointMixin, Trainer):
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
    parameter trained up to that stage; the last one is what ``evaluate`` loads.
    """

    def __init__(self, config, model):
        self.stages = list(model.training_stages)
        self.stage = self.stages[-1]  # a trainer that only evaluates expects a finished model
        self.stage_train_loss = {}  # stage -> {epoch: loss}
        super().__init__(config, model)

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

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        stem = self.saved_model_file[: -len(".pth")] if self.saved_model_file.endswith(".pth") else self.saved_model_file
        eval_step = self.config["eval_step"]
        result = (self.best_valid_score, self.best_valid_result)
        for stage in self.stages:
            self._enter_stage(stage)
            settings = self.model.stage_settings(stage)
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
    (total = ``epochs`` x batches per epoch), the probability that the batch uses hybrid prompts."""

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        total_steps = self.epochs * len(train_data)
        step = epoch_idx * len(train_data)
        loss_func = loss_func or self.model.calculate_loss

        def curriculum_loss(interaction):
            nonlocal step
            self.model.curriculum_progress = step / total_steps
            step += 1
            return loss_func(interaction)

        return super()._train_epoch(train_data, epoch_idx, loss_func=curriculum_loss, show_progress=show_progress)
