r"""
CoLLM
################################################

Reference:
    Yang Zhang et al. "CoLLM: Integrating Collaborative Embeddings into Large Language Models for
    Recommendation" in IEEE TKDE 2025 (arXiv 2310.19488).

TALLRec's Yes/No prompt with collaborative information: the frozen SASRec teacher's user state
(after the liked titles) and the candidate's SASRec item embedding (after its title) enter the LLM
as soft tokens, both through one mapping MLP. Training has two steps, as in the paper: LoRA on the
text-only prompt (step ``lora``), then the mapping MLP with the LoRA frozen (step ``mapping``).

``scoring: native``: the loss is binary cross-entropy on the raw Yes logit; a candidate's score is
that logit, with the user's prompt prefix run once for all candidates. ``scoring: retrieval`` (the
LLM-SRec paper's form): the user prompt opens with the mapped user state at ``[UserRep]`` and each
title is followed by its mapped item embedding; user and item prompts end in ``[UserOut]`` /
``[ItemOut]``; the heads train in both steps, LoRA in the first, the mapping in the second.
"""

import torch
from torch.nn import functional as F

from recbole_llmsrec.model.layers import ProjectionMLP
from recbole_llmsrec.model.sequential_recommender.tallrec import TALLRec
from recbole_llmsrec.teacher import load_teacher

RETRIEVAL_HEADS = ("user_head", "item_head", "user_out_token", "item_out_token")


class CoLLM(TALLRec):
    uses_teacher = True  # besides TALLRec's LLM and item text (checked by check_settings)
    USER_FEATURE = "Their preference is also encoded in the feature "
    ITEM_FEATURE = " with the feature "

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.teacher = load_teacher(config, dataset)
        d_cf = self.teacher.hidden_size
        self.mapping = ProjectionMLP(d_cf, 10 * d_cf, self.llm.hidden_size, "relu", norm=False)  # CIE map g, users and items

        self.text_prompts = self.prompts
        self.soft_prompts = self.prompt_builder(config, soft_tokens=True)
        self.user_feature = (
            list(self.prompts.piece(self.USER_FEATURE)) + [self.prompts.user_rep_id] + self.liked_end
        )
        self.item_feature = list(self.prompts.piece(self.ITEM_FEATURE)) + [self.prompts.history_emb_id]

        heads = RETRIEVAL_HEADS if self.scoring == "retrieval" else ()
        lora = tuple(f"llm.{name}" for name, param in self.llm.named_parameters() if param.requires_grad)
        self.training_stages = {"lora": lora + heads, "mapping": ("mapping.",) + heads}
        self.settings = {
            "lora": {"epochs": config["collm_lora_epochs"], "learning_rate": config["collm_lora_learning_rate"],
                     "checkpoint": config["collm_lora_checkpoint"]},
            "mapping": {"epochs": config["epochs"], "learning_rate": config["learning_rate"], "checkpoint": None},
        }
        self.set_stage("mapping")  # a finished model: prompts with the collaborative soft tokens

    # ---- steps (driven by StagedTrainer) --------------------------------------------------------

    def set_stage(self, stage):
        self.stage = stage
        self.prompts = self.soft_prompts if stage == "mapping" else self.text_prompts
        self.clear_cache()

    def stage_settings(self, stage):
        return self.settings[stage]

    def train(self, mode=True):
        super().train(mode)
        self.teacher.train(False)
        return self

    # ---- collaborative soft tokens (step ``mapping`` on) ----------------------------------------

    @property
    def collaborative(self):
        return self.stage == "mapping"

    def mapped_user_state(self, item_seq, item_seq_len):
        with torch.no_grad():
            state = self.teacher(item_seq, item_seq_len)
        return self.mapping(state)

    def mapped_items(self, items):
        return self.mapping(self.teacher.item_embedding(items))

    # the Yes/No prompt
    def yes_no_prefix(self, history):
        ids = super().yes_no_prefix(history)
        return ids + self.user_feature if self.collaborative else ids

    def yes_no_suffix(self, item):
        if not self.collaborative:
            return super().yes_no_suffix(item)
        return self.question + self.prompts.item_tokens[item] + self.item_feature + self.answer_cue

    def prefix_soft_tokens(self, item_seq, item_seq_len):
        if not self.collaborative:
            return {}
        return {self.prompts.user_rep_id: self.mapped_user_state(item_seq, item_seq_len)}

    def suffix_soft_tokens(self, items):
        return {self.prompts.history_emb_id: self.mapped_items(items)} if self.collaborative else {}

    def yes_no_loss(self, logits, labels):
        """Binary cross-entropy on the raw Yes logit (CoLLM's loss, both steps)."""
        return F.binary_cross_entropy_with_logits(logits[:, self.yes_id], labels)

    def yes_no_score(self, logits):
        return logits[:, 0]

    # the retrieval prompts (hooks of LLMRetrievalMixin)
    def item_soft_tokens(self, items):
        return self.mapped_items(items) if self.collaborative else None

    def user_soft_prefix(self, item_seq, item_seq_len):
        return self.mapped_user_state(item_seq, item_seq_len) if self.collaborative else None
