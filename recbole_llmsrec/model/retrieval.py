"""LLM-SRec's next-item retrieval form, for every LLM recommender (baselines.md §5.2 b).

A user prompt (the last items of the history, each title optionally followed by a soft item
token) ends in ``[UserOut]``; an item prompt ends in ``[ItemOut]``. The LLM's hidden states there,
through ``f_user`` / ``f_item``, give the vectors whose dot product is the score. The loss is a
softmax cross-entropy of the target against sampled negatives. Because every item has one
vector, ``full_sort_predict`` is one matrix product.

:class:`LLMRetrievalMixin` is mixed in before RecBole's ``SequentialRecommender``. The host sets
``self.llm`` (an :class:`~recbole_llmsrec.llm.backbone.LLMBackbone`) and ``self.prompts`` (a
:class:`~recbole_llmsrec.llm.text.PromptBuilder`), then calls :meth:`init_retrieval`. Two hooks say
what the prompts carry besides text: :meth:`item_soft_tokens` (one vector per item placeholder,
e.g. LLM-SRec's projected SASRec item embedding) and :meth:`user_soft_prefix` (one vector at the
``[UserRep]`` marker that opens the user prompt, e.g. A-LLMRec's projected SASRec user state).
Every read-out reaches its head through :meth:`project_user` / :meth:`project_item`, so that a
host can transform it first (LLM-SRec's optional read-out centring).
"""

import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from recbole_llmsrec.llm.backbone import USER_REP, read_out
from recbole_llmsrec.llm.text import history_windows, timestamp_list_field
from recbole_llmsrec.model.layers import ProjectionMLP


class LLMRetrievalMixin:
    def init_retrieval(self, config, dataset):
        self.prompt_history_len = config["prompt_history_len"]
        self.train_neg_num = config["train_neg_num"]
        self.llm_batch_size = config["llm_batch_size"]
        self.show_progress = config["show_progress"]
        self.TIME_SEQ = timestamp_list_field(config, dataset) if config["prompt_show_dates"] else None
        d_llm = self.llm.hidden_size
        self.user_head = ProjectionMLP(d_llm, config["mlp_hidden_size"], config["proj_dim"], "leaky_relu")  # f_user
        self.item_head = ProjectionMLP(d_llm, config["mlp_hidden_size"], config["proj_dim"], "leaky_relu")  # f_item
        mean, std = self.llm.token_embedding_stats()
        self.user_out_token = nn.Parameter(torch.randn(d_llm) * std + mean)
        self.item_out_token = nn.Parameter(torch.randn(d_llm) * std + mean)
        self.clear_cache()

    # ---- hooks -------------------------------------------------------------------------------

    def item_soft_tokens(self, items):
        """Vectors for the items' placeholders (``[n, d_llm]``), or None for text-only prompts."""
        return None

    def user_soft_prefix(self, item_seq, item_seq_len):
        """One vector per user prompt for its opening ``[UserRep]`` marker, or None for none."""
        return None

    def project_user(self, user_state):
        """f_user(h_U): the scoring vector of each read-out (a host may transform h_U first)."""
        return self.user_head(user_state)

    def project_item(self, item_state):
        """f_item(h_I): the scoring vector of each read-out (a host may transform h_I first)."""
        return self.item_head(item_state)

    # ---- caches: vectors are computed once and reused until the parameters change -------------

    def clear_cache(self):
        self._item_vectors = None
        self._user_vectors = {}

    def train(self, mode=True):
        super().train(mode)
        if mode:
            self.clear_cache()
        return self

    def load_state_dict(self, state_dict, strict=True, assign=False):
        self.clear_cache()
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # ---- representations ---------------------------------------------------------------------

    def _encode(self, sequences, items, out_token_id, out_vector, prefix=None):
        """Run prompts through the LLM with item, prefix and output vectors injected; read the output."""
        device = self.user_out_token.device
        soft_tokens = {out_token_id: out_vector.expand(len(sequences), -1)}
        item_vectors = self.item_soft_tokens(torch.tensor(items, dtype=torch.long, device=device))
        if item_vectors is not None:
            soft_tokens[self.prompts.history_emb_id] = item_vectors
        if prefix is not None:
            soft_tokens[self.llm.token_ids[USER_REP]] = prefix
        hidden, input_ids = self.llm.encode_prompts(sequences, soft_tokens, device)
        return read_out(hidden, input_ids, out_token_id).float()

    def user_repr(self, item_seq, item_seq_len, time_seq=None):
        """h_U: the LLM's hidden state at ``[UserOut]`` for each sequence, ``[batch, d_llm]``."""
        windows, times = history_windows(item_seq, item_seq_len, self.prompt_history_len, time_seq)
        prefix = self.user_soft_prefix(item_seq, item_seq_len)
        sequences = [self.prompts.user_prompt(items, ts, user_rep=prefix is not None) for items, ts in zip(windows, times)]
        flat_items = [item for items in windows for item in items]
        return self._encode(sequences, flat_items, self.prompts.user_out_id, self.user_out_token, prefix)

    def item_repr(self, items):
        """h_I: the LLM's hidden state at ``[ItemOut]`` for each item id, ``[n, d_llm]``."""
        # an item drawn twice in one step (one user's target, another's negative) runs once
        unique, inverse = torch.unique(items, return_inverse=True)
        unique = unique.tolist()
        sequences = [self.prompts.item_prompt(item) for item in unique]
        return self._encode(sequences, unique, self.prompts.item_out_id, self.item_out_token)[inverse]

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
                    lambda index: self.project_item(self.item_repr(items[index])), items, lengths, "Item vectors"
                )
            self._item_vectors = torch.cat([vectors.new_zeros(1, vectors.shape[1]), vectors])
        return self._item_vectors

    def user_vectors(self, interaction):
        """f_user(h_U) per row of an evaluation batch; each distinct (user, history) runs once."""
        return self.user_states(interaction)[1]

    def user_states(self, interaction):
        """``(h_U, f_user(h_U))`` per row of an evaluation batch. Each distinct (user, history) runs
        through the LLM once and both are cached until the parameters change, so that a diagnostic
        reading h_U after an evaluation pass costs no LLM call."""
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
                with torch.no_grad():
                    state = self.user_repr(
                        item_seq[rows[index]], item_seq_len[rows[index]], times[index] if times is not None else None)
                    return torch.cat([state, self.project_user(state)], dim=1)

            states = self._chunked(compute, todo, item_seq_len[rows].tolist(), "User vectors")
            for i, state in zip(todo, states):
                self._user_vectors[cache_keys[i]] = state
        states = torch.stack([self._user_vectors[cache_key] for cache_key in cache_keys])[inverse]
        d_llm = self.user_out_token.shape[-1]
        return states[:, :d_llm], states[:, d_llm:]

    # ---- training ----------------------------------------------------------------------------

    def sample_negatives(self, item_seq, target, num=None):
        """``num`` (default ``train_neg_num``) uniform item ids per row, none in the row's history or target."""
        num = self.train_neg_num if num is None else num
        forbidden = torch.cat([item_seq, target.unsqueeze(1)], dim=1)
        negatives = torch.randint(1, self.n_items, (len(target), num), device=target.device)
        for _ in range(1000):
            clash = (negatives.unsqueeze(-1) == forbidden.unsqueeze(1)).any(-1)
            if not clash.any():
                return negatives
            negatives[clash] = torch.randint(1, self.n_items, (int(clash.sum()),), device=target.device)
        raise RuntimeError("cannot sample negatives: some user has interacted with almost every item")

    def retrieval_loss(self, interaction):
        """Softmax cross-entropy of the target against ``train_neg_num`` negatives; also returns f_user(h_U)."""
        item_seq, item_seq_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        target = interaction[self.POS_ITEM_ID]
        time_seq = interaction[self.TIME_SEQ] if self.TIME_SEQ else None
        user_vec = self.project_user(self.user_repr(item_seq, item_seq_len, time_seq))
        candidates = torch.cat([target.unsqueeze(1), self.sample_negatives(item_seq, target)], dim=1)
        item_vec = self.project_item(self.item_repr(candidates.flatten())).view(*candidates.shape, -1)
        logits = torch.bmm(item_vec, user_vec.unsqueeze(-1)).squeeze(-1)
        return F.cross_entropy(logits, torch.zeros_like(target)), user_vec

    # ---- evaluation --------------------------------------------------------------------------

    def retrieval_predict(self, interaction):
        user_vec = self.user_vectors(interaction)
        item_vec = self.all_item_vectors()[interaction[self.ITEM_ID]]
        return (user_vec * item_vec).sum(-1)

    def retrieval_full_sort_predict(self, interaction):
        return self.user_vectors(interaction) @ self.all_item_vectors().T
