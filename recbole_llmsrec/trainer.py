"""Trainers for the LLM models: RecBole's ``Trainer``, saving and loading trained parameters only.

A frozen LLM is never written into a checkpoint; the optimiser sees only trainable parameters.
Looked up by ``recbole_llmsrec.utils.get_trainer`` as ``<Model>Trainer``.
"""

from recbole.trainer import Trainer

from recbole_llmsrec.compat import TrustedCheckpointMixin, load_recbole_checkpoint


def trainable_state_dict(model):
    return {name: param.detach().clone() for name, param in model.named_parameters() if param.requires_grad}


class LLMTrainer(TrustedCheckpointMixin, Trainer):
    def _build_optimizer(self, **kwargs):
        kwargs.setdefault("params", [p for p in self.model.parameters() if p.requires_grad])
        return super()._build_optimizer(**kwargs)

    def checkpoint_state_dict(self):
        return trainable_state_dict(self.model)

    def load_model_checkpoint(self, checkpoint_file):
        checkpoint = load_recbole_checkpoint(checkpoint_file, map_location=self.device)
        expected = set(trainable_state_dict(self.model))
        saved = set(checkpoint["state_dict"])
        if saved != expected:
            raise ValueError(
                f"checkpoint {checkpoint_file} does not hold this model's trained parameters "
                f"(missing {sorted(expected - saved)[:5]}, unexpected {sorted(saved - expected)[:5]}); "
                f"was it written by another model or configuration?"
            )
        self.model.load_state_dict(checkpoint["state_dict"], strict=False)
        self.model.load_other_parameter(checkpoint.get("other_parameter"))
        self.logger.info(f"Loading trained parameters from {checkpoint_file}")
        return checkpoint


class LLMSRecTrainer(LLMTrainer):
    pass


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
