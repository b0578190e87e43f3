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
