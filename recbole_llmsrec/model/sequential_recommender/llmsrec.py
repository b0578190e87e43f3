r"""
LLMSRec
################################################

Reference:
    Sein Kim et al. "Lost in Sequence: Do Large Language Models Understand Sequential
    Recommendation?" in KDD 2025.

A frozen LLM reads a user's last items (titles, each followed by its projected SASRec item
embedding as a soft token) and emits a user vector at ``[UserOut]``; an item prompt emits an item
vector at ``[ItemOut]``; the score is their dot product. Trained: f_I, f_user, f_item, f_CF-user
and the two output-token vectors, with a retrieval loss, a distillation loss toward a frozen
pre-trained SASRec (the teacher), and a uniformity term.

Not in the paper: ``llmsrec_readout_norm`` centres (or standardises) each read-out, h_U and h_I
separately, with running statistics gathered over the training steps, before f_user / f_item
(:class:`~recbole_llmsrec.model.layers.RunningNorm`). The read-outs of different users share a
large common component; centring removes it so the heads see the per-user part. The statistics
travel in checkpoints through RecBole's ``other_parameter``.
"""

import torch
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from torch.nn import functional as F

from recbole_llmsrec.llm.backbone import LLMBackbone
from recbole_llmsrec.llm.text import PromptBuilder, read_item_text
from recbole_llmsrec.model.layers import ProjectionMLP, RunningNorm, distillation, uniformity
from recbole_llmsrec.model.retrieval import LLMRetrievalMixin
from recbole_llmsrec.teacher import load_teacher

READOUT_NORMS = ("none", "center", "standardize")


class LLMSRec(LLMRetrievalMixin, SequentialRecommender):
    input_type = InputType.POINTWISE
    # what check_settings checks before anything trains (recbole_llmsrec.config)
    uses_llm = uses_item_text = uses_teacher = True

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.lambda_distill = config["lambda_distill"]
        self.lambda_uniform = config["lambda_uniform"]
        self.teacher_train_mode = config["teacher_train_mode"]
        self.bypass_llm = config["llmsrec_bypass_llm"]
        self.readout_norm = config["llmsrec_readout_norm"] or "none"  # YAML null or --x=None: off
        if self.readout_norm not in READOUT_NORMS:
            raise ValueError(f"llmsrec_readout_norm must be one of {', '.join(READOUT_NORMS)}, not "
                             f"{self.readout_norm!r}; set it in properties/model/LLMSRec.yaml or with "
                             f"--llmsrec_readout_norm=center")

        item_text = read_item_text(config, dataset)  # first: bad text settings fail before any training
        self.teacher = load_teacher(config, dataset)
        self.llm = LLMBackbone.from_config(config)
        self.prompts = PromptBuilder(
            self.llm.tokenizer,
            item_text,
            max_item_tokens=config["item_text_max_tokens"],
            timestamp_unit=config["timestamp_unit"],
        )
        self.init_retrieval(config, dataset)  # f_user, f_item, [UserOut], [ItemOut]

        d_llm, d_cf = self.llm.hidden_size, self.teacher.hidden_size
        self.item_proj = ProjectionMLP(d_cf, d_llm, d_llm, "leaky_relu")  # f_I
        self.teacher_user_head = ProjectionMLP(d_cf, config["proj_dim"], config["proj_dim"], "gelu")  # f_CF-user
        if self.readout_norm != "none":
            scale = self.readout_norm == "standardize"
            self.user_readout_norm = RunningNorm(d_llm, scale=scale)  # before f_user
            self.item_readout_norm = RunningNorm(d_llm, scale=scale)  # before f_item

    def train(self, mode=True):
        super().train(mode)
        self.teacher.train(mode and self.teacher_train_mode)
        return self

    def item_soft_tokens(self, items):
        return self.item_proj(self.teacher.item_embedding(items))

    def user_repr(self, item_seq, item_seq_len, time_seq=None):
        if self.bypass_llm:  # the sanity bound: the teacher's user state, lifted by f_I, no LLM
            with torch.no_grad():
                state = self.teacher(item_seq, item_seq_len)
            return self.item_proj(state)
        return super().user_repr(item_seq, item_seq_len, time_seq)

    def item_repr(self, items):
        if self.bypass_llm:  # the item's own soft token, f_I(E_i), in place of the LLM's [ItemOut] state
            return self.item_soft_tokens(items)
        return super().item_repr(items)

    def project_user(self, user_state):
        if self.readout_norm != "none":
            user_state = self.user_readout_norm(user_state)
        return self.user_head(user_state)

    def project_item(self, item_state):
        if self.readout_norm != "none":
            item_state = self.item_readout_norm(item_state)
        return self.item_head(item_state)

    # the read-out statistics are buffers, not trained parameters, so LLMTrainer's checkpoint (the
    # trained parameters) leaves them out; RecBole's other_parameter carries them
    def other_parameter(self):
        other = super().other_parameter()
        if self.readout_norm != "none":
            other["llmsrec_readout_norm"] = {
                "mode": self.readout_norm,
                "user": {k: v.detach().clone() for k, v in self.user_readout_norm.state_dict().items()},
                "item": {k: v.detach().clone() for k, v in self.item_readout_norm.state_dict().items()},
            }
        return other

    def load_other_parameter(self, para):
        para = dict(para or {})
        saved = para.pop("llmsrec_readout_norm", None)
        saved_mode = saved["mode"] if saved is not None else "none"
        if saved_mode != self.readout_norm:
            raise ValueError(
                f"this checkpoint was trained with llmsrec_readout_norm: {saved_mode}, this model has "
                f"{self.readout_norm}: its heads expect {saved_mode} read-outs; set "
                f"--llmsrec_readout_norm={saved_mode} to load it"
            )
        if saved is not None:
            self.user_readout_norm.load_state_dict(saved["user"])
            self.item_readout_norm.load_state_dict(saved["item"])
        self.clear_cache()
        super().load_other_parameter(para)

    def calculate_loss(self, interaction):
        retrieval, user_vec = self.retrieval_loss(interaction)
        with torch.no_grad():
            teacher_state = self.teacher(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        teacher_vec = self.teacher_user_head(teacher_state)
        distill = self.lambda_distill * distillation(user_vec, teacher_vec)
        uniform = self.lambda_uniform * (
            uniformity(F.normalize(user_vec, dim=-1)) + uniformity(F.normalize(teacher_vec, dim=-1))
        )
        return retrieval, distill, uniform

    def predict(self, interaction):
        return self.retrieval_predict(interaction)

    def full_sort_predict(self, interaction):
        return self.retrieval_full_sort_predict(interaction)
