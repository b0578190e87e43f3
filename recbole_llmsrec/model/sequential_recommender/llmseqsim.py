r"""
LLMSeqSim
################################################

Reference:
    Jesse Harte et al. "Leveraging Large Language Models for Sequential Recommendation" in RecSys 2023,
    and Artun Boz et al. "Improving Sequential Recommendations with LLMs" (the extension).

No training: a user's history becomes one vector, the (decay-weighted) mean or the last of its
items' text embeddings, and every item is ranked by its similarity to that vector. Items already
in the history are ranked last.
"""

import math

import torch
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from torch.nn import functional as F

from recbole_llmsrec.llm.encoder import item_classes, item_text_embeddings, reduce_item_vectors


def decay_weights(k, n, decay):
    """Weight of the item at recency ``k`` (1 = most recent) in a history of length ``n``."""
    if decay == "none":
        return torch.ones_like(k)
    if decay == "constant_linear":
        return (1 - 0.1 * (k - 1)).clamp(min=1e-5)
    if decay in ("scaling_linear", "scaling_quadratic", "scaling_cubic"):
        linear = (1 - (k - 1) / n).clamp(min=1e-5)
        return linear ** {"scaling_linear": 1, "scaling_quadratic": 2, "scaling_cubic": 3}[decay]
    if decay == "log":
        return 1 / (torch.log(k) + 1)
    if decay == "harmonic":
        return 1 / k
    if decay == "harmonic_squared":
        return 1 / k**2
    raise ValueError(
        f"unknown llmseqsim_decay {decay!r}; choose none, constant_linear, scaling_linear, "
        f"scaling_quadratic, scaling_cubic, log, harmonic or harmonic_squared"
    )


class LLMSeqSim(SequentialRecommender):
    input_type = InputType.POINTWISE
    training_free = True  # evaluated by TrainingFreeTrainer without a training loop
    # what check_settings checks before anything trains (recbole_llmsrec.config)
    uses_item_text = True

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.aggregation = config["llmseqsim_agg"]
        self.decay = config["llmseqsim_decay"]
        self.similarity = config["llmseqsim_sim"]
        self.filter_seen = config["llmseqsim_filter_seen"]
        if self.aggregation not in ("mean", "last"):
            raise ValueError(f"llmseqsim_agg must be mean or last, not {self.aggregation!r}")
        if self.similarity not in ("cosine", "dot", "euclidean"):
            raise ValueError(f"llmseqsim_sim must be cosine, dot or euclidean, not {self.similarity!r}")
        decay_weights(torch.ones(1), 1, self.decay)  # validates the name now, not at evaluation

        vectors = item_text_embeddings(config, dataset)
        method = config["llmseqsim_reduce"]
        if method != "none":
            classes = item_classes(dataset, config["llmseqsim_class_field"]) if method == "lda" else None
            vectors = reduce_item_vectors(vectors, config["llmseqsim_dim"], method, config["seed"], classes)
        if config["llmseqsim_normalize"]:
            vectors = F.normalize(vectors, dim=-1)
        # a buffer, not a parameter: nothing here trains, and it is rebuilt from the cache on load
        self.register_buffer("item_vectors", vectors, persistent=False)

    def user_vectors(self, item_seq, item_seq_len):
        """The history's vector: weighted mean (or last) of its item vectors, ``[batch, dim]``."""
        positions = torch.arange(item_seq.shape[1], device=item_seq.device).unsqueeze(0)
        valid = positions < item_seq_len.unsqueeze(1)
        if self.aggregation == "last":
            last_items = item_seq[torch.arange(len(item_seq), device=item_seq.device), item_seq_len - 1]
            return self.item_vectors[last_items]
        recency = (item_seq_len.unsqueeze(1) - positions).float()  # 1 for the most recent item
        weights = decay_weights(recency.clamp(min=1), item_seq_len.unsqueeze(1).float(), self.decay) * valid
        history = self.item_vectors[item_seq]
        return (weights.unsqueeze(-1) * history).sum(1) / weights.sum(1, keepdim=True).clamp(min=1e-12)

    def _scores(self, user_vec, item_vec):
        """Similarity of each user row with each item row (``[batch, n]``)."""
        if self.similarity == "cosine":
            return F.normalize(user_vec, dim=-1) @ F.normalize(item_vec, dim=-1).T
        if self.similarity == "dot":
            return user_vec @ item_vec.T
        return 1 / (1 + torch.cdist(user_vec, item_vec))

    def calculate_loss(self, interaction):
        raise RuntimeError("LLMSeqSim has nothing to train; it is evaluated directly (TrainingFreeTrainer)")

    def full_sort_predict(self, interaction):
        item_seq, item_seq_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        scores = self._scores(self.user_vectors(item_seq, item_seq_len), self.item_vectors)
        if self.filter_seen:
            scores = scores.scatter(1, item_seq, -math.inf)  # also hits column 0, the padding item
        scores[:, 0] = -math.inf
        return scores

    def predict(self, interaction):
        item_seq, item_seq_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        items = interaction[self.ITEM_ID]
        user_vec = self.user_vectors(item_seq, item_seq_len)
        item_vec = self.item_vectors[items]
        if self.similarity == "cosine":
            scores = (F.normalize(user_vec, dim=-1) * F.normalize(item_vec, dim=-1)).sum(-1)
        elif self.similarity == "dot":
            scores = (user_vec * item_vec).sum(-1)
        else:
            scores = 1 / (1 + (user_vec - item_vec).norm(dim=-1))
        if self.filter_seen:
            scores = scores.masked_fill((item_seq == items.unsqueeze(1)).any(1), -math.inf)
        return scores
