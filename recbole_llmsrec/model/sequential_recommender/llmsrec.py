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
"""

import torch
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from recbole_llmsrec.llm.backbone import LLMBackbone, read_out
from recbole_llmsrec.llm.text import PromptBuilder, read_item_text, timestamp_list_field
from recbole_llmsrec.model.layers import ProjectionMLP, distillation, uniformity
from recbole_llmsrec.teacher import load_teacher


class LLMSRec(SequentialRecommender):
    input_type = InputType.POINTWISE

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.prompt_history_len = config["prompt_history_len"]
        self.train_neg_num = config["train_neg_num"]
        self.lambda_distill = config["lambda_distill"]
        self.lambda_uniform = config["lambda_uniform"]
        self.teacher_train_mode = config["teacher_train_mode"]
        self.llm_batch_size = config["llm_batch_size"]
        self.show_progress = config["show_progress"]
        self.TIME_SEQ = timestamp_list_field(config, dataset) if config["prompt_show_dates"] else None

        self.teacher = load_teacher(config, dataset)
        self.llm = LLMBackbone.from_config(config)
        self.prompts = PromptBuilder(
            self.llm.tokenizer,
            read_item_text(config, dataset),
            max_item_tokens=config["item_text_max_tokens"],
            timestamp_unit=config["timestamp_unit"],
        )

        d_llm, d_cf = self.llm.hidden_size, self.teacher.hidden_size
        proj_dim, mlp_hidden = config["proj_dim"], config["mlp_hidden_size"]
        self.item_proj = ProjectionMLP(d_cf, d_llm, d_llm, "leaky_relu")  # f_I
        self.user_head = ProjectionMLP(d_llm, mlp_hidden, proj_dim, "leaky_relu")  # f_user
        self.item_head = ProjectionMLP(d_llm, mlp_hidden, proj_dim, "leaky_relu")  # f_item
        self.teacher_user_head = ProjectionMLP(d_cf, proj_dim, proj_dim, "gelu")  # f_CF-user
        mean, std = self.llm.token_embedding_stats()
        self.user_out_token = nn.Parameter(torch.randn(d_llm) * std + mean)
        self.item_out_token = nn.Parameter(torch.randn(d_llm) * std + mean)
        self._clear_cache()

    # Item and user vectors are computed once and reused until the parameters change: entering
    # training mode or loading a checkpoint clears them.
    def _clear_cache(self):
        self._item_vectors = None
        self._user_vectors = {}

    def train(self, mode=True):
        super().train(mode)
        self.teacher.train(mode and self.teacher_train_mode)
        if mode:
            self._clear_cache()
        return self

    def load_state_dict(self, state_dict, strict=True, assign=False):
        self._clear_cache()
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # ---- representations -------------------------------------------------------------------

    def _encode(self, sequences, history_items, out_token_id, out_vector):
        """Run prompts through the LLM with item embeddings and the output token injected."""
        device = self.user_out_token.device
        input_ids, attention_mask = self.prompts.pad(sequences, device)
        items = torch.tensor(history_items, dtype=torch.long, device=device)
        soft_tokens = {
            self.prompts.history_emb_id: self.item_proj(self.teacher.item_embedding(items)),
            out_token_id: out_vector.expand(len(sequences), -1),
        }
        hidden = self.llm.encode(input_ids, attention_mask, soft_tokens)
        return read_out(hidden, input_ids, out_token_id).float()

    def user_repr(self, item_seq, item_seq_len, time_seq=None):
        """h_U: the LLM's hidden state at ``[UserOut]`` for each sequence, ``[batch, d_llm]``."""
        windows, times = self.prompts.history_windows(item_seq, item_seq_len, self.prompt_history_len, time_seq)
        sequences = [self.prompts.user_prompt(items, ts) for items, ts in zip(windows, times)]
        flat_items = [item for items in windows for item in items]
        return self._encode(sequences, flat_items, self.prompts.user_out_id, self.user_out_token)

    def item_repr(self, items):
        """h_I: the LLM's hidden state at ``[ItemOut]`` for each item id, ``[n, d_llm]``."""
        items = items.tolist()
        sequences = [self.prompts.item_prompt(item) for item in items]
        return self._encode(sequences, items, self.prompts.item_out_id, self.item_out_token)

    def _chunked(self, compute, rows, lengths, desc):
        """Evaluate ``compute`` over ``rows`` in length-sorted chunks (less padding), in input order."""
        order = sorted(range(len(rows)), key=lambda i: lengths[i])
        chunks = range(0, len(order), self.llm_batch_size)
        if self.show_progress and len(chunks) > 1:
            chunks = tqdm(chunks, desc=desc, ncols=100, leave=False)
        outputs = [None] * len(rows)
        for start in chunks:
            index = order[start : start + self.llm_batch_size]
            for i, vector in zip(index, compute(index)):
                outputs[i] = vector
        return torch.stack(outputs)

    def all_item_vectors(self):
        """f_item(h_I) for every item (cached until the parameters change); row 0 (padding) is zero."""
        if self._item_vectors is None:
            items = torch.arange(1, self.n_items, device=self.user_out_token.device)
            lengths = [len(self.prompts.item_prompt(item)) for item in items.tolist()]
            with torch.no_grad():
                vectors = self._chunked(
                    lambda index: self.item_head(self.item_repr(items[index])), items, lengths, "Item vectors"
                )
            self._item_vectors = torch.cat([vectors.new_zeros(1, vectors.shape[1]), vectors])
        return self._item_vectors

    def _eval_user_vectors(self, interaction):
        """f_user(h_U) per row; each distinct (user, history) runs through the LLM once."""
        item_seq, item_seq_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        time_seq = interaction[self.TIME_SEQ] if self.TIME_SEQ else None
        key = torch.cat([interaction[self.USER_ID].unsqueeze(1), item_seq_len.unsqueeze(1), item_seq], dim=1)
        unique_keys, inverse = torch.unique(key, dim=0, return_inverse=True)
        first = torch.full((len(unique_keys),), len(key), dtype=torch.long, device=key.device)
        first.scatter_reduce_(0, inverse, torch.arange(len(key), device=key.device), reduce="amin")
        cache_keys = [tuple(row) for row in unique_keys.tolist()]
        todo = [i for i, cache_key in enumerate(cache_keys) if cache_key not in self._user_vectors]
        if todo:
            rows = first[todo]
            times = time_seq[rows] if time_seq is not None else None

            def compute(index):
                return self.user_head(self.user_repr(
                    item_seq[rows[index]], item_seq_len[rows[index]], times[index] if times is not None else None))

            vectors = self._chunked(compute, todo, item_seq_len[rows].tolist(), "User vectors")
            for i, vector in zip(todo, vectors):
                self._user_vectors[cache_keys[i]] = vector
        return torch.stack([self._user_vectors[cache_key] for cache_key in cache_keys])[inverse]

    # ---- training --------------------------------------------------------------------------

    def sample_negatives(self, item_seq, target):
        """``train_neg_num`` uniform item ids per row, none in the row's history or its target."""
        forbidden = torch.cat([item_seq, target.unsqueeze(1)], dim=1)
        negatives = torch.randint(1, self.n_items, (len(target), self.train_neg_num), device=target.device)
        for _ in range(1000):
            clash = (negatives.unsqueeze(-1) == forbidden.unsqueeze(1)).any(-1)
            if not clash.any():
                return negatives
            negatives[clash] = torch.randint(1, self.n_items, (int(clash.sum()),), device=target.device)
        raise RuntimeError("cannot sample negatives: some user has interacted with almost every item")

    def calculate_loss(self, interaction):
        item_seq, item_seq_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        target = interaction[self.POS_ITEM_ID]
        time_seq = interaction[self.TIME_SEQ] if self.TIME_SEQ else None

        user_vec = self.user_head(self.user_repr(item_seq, item_seq_len, time_seq))
        candidates = torch.cat([target.unsqueeze(1), self.sample_negatives(item_seq, target)], dim=1)
        item_vec = self.item_head(self.item_repr(candidates.flatten())).view(*candidates.shape, -1)
        logits = torch.bmm(item_vec, user_vec.unsqueeze(-1)).squeeze(-1)
        retrieval = F.cross_entropy(logits, torch.zeros_like(target))

        with torch.no_grad():
            teacher_state = self.teacher(item_seq, item_seq_len)
        teacher_vec = self.teacher_user_head(teacher_state)
        distill = self.lambda_distill * distillation(user_vec, teacher_vec)
        uniform = self.lambda_uniform * (
            uniformity(F.normalize(user_vec, dim=-1)) + uniformity(F.normalize(teacher_vec, dim=-1))
        )
        return retrieval, distill, uniform

    # ---- evaluation ------------------------------------------------------------------------

    def predict(self, interaction):
        user_vec = self._eval_user_vectors(interaction)
        item_vec = self.all_item_vectors()[interaction[self.ITEM_ID]]
        return (user_vec * item_vec).sum(-1)

    def full_sort_predict(self, interaction):
        return self._eval_user_vectors(interaction) @ self.all_item_vectors().T
