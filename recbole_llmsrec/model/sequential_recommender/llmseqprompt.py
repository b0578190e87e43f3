r"""
LLMSeqPrompt
################################################

Reference:
    Jesse Harte et al. "Leveraging Large Language Models for Sequential Recommendation" in RecSys 2023.

A causal LM, fine-tuned with LoRA, reads the numbered titles of a user's history and writes the
title of the next item. Generated titles map to catalogue items by text-embedding similarity: an
item's score is its best cosine similarity to any of the ``llmseqprompt_num_samples`` generated
titles (an exact title scores 1), and items of the history rank last. The paper mapped its samples
the same way (exact matches, then nearest neighbours by embedding); a score per item lets RecBole
rank with it in both ``full`` and ``uni100`` evaluation.

Sampling draws from one random stream per generated title, seeded by (``llmseqprompt_sample_seed``,
user, sample number): a user's titles do not depend on which users share the batch, on what ran
before, or on the order of the passes, and the passes over shuffled histories draw the same random
numbers as the pass over the original ones.
"""

import hashlib
import math

import torch
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from torch.nn import functional as F
from transformers import LogitsProcessor, LogitsProcessorList

from recbole_llmsrec.llm.backbone import add_lora, load_causal_lm
from recbole_llmsrec.llm.cache import cache_kwargs, output_cache
from recbole_llmsrec.llm.encoder import TextEncoder, item_text_embeddings
from recbole_llmsrec.llm.text import history_windows, read_item_text


def stream_seed(*parts):
    """A 63-bit seed from ``parts`` (ints, strings, tuples), the same in every process."""
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little") >> 1


class RowSampler(LogitsProcessor):
    """Temperature and nucleus sampling with one random generator per row, for greedy decoding.

    Each row draws its token by inverting the cumulative distribution of the tempered, nucleus-cut
    softmax at one uniform number from the row's own generator, and keeps only that token's score
    for greedy decoding to pick. A row's samples are those of its seed whatever rows it is batched
    with; one number per row and step costs far less than noise over the whole vocabulary.
    """

    def __init__(self, seeds, temperature, top_p, device):
        self.generators = [torch.Generator(device=device).manual_seed(seed) for seed in seeds]
        self.temperature, self.top_p = temperature, top_p

    def __call__(self, input_ids, scores):
        if scores.shape[0] != len(self.generators):
            raise ValueError(f"{scores.shape[0]} rows to sample for {len(self.generators)} seeds")
        probs = (scores.float() / self.temperature).softmax(-1)
        if self.top_p < 1.0:  # keep the most likely tokens whose probability reaches top_p (at least one)
            ordered, order = probs.sort(dim=-1, descending=True)
            ordered = ordered.masked_fill(ordered.cumsum(-1) - ordered >= self.top_p, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, order, ordered)
        cdf = probs.cumsum(-1)
        uniform = 1.0 - torch.cat([torch.rand(1, generator=g, device=g.device) for g in self.generators])  # (0, 1]
        token = torch.searchsorted(cdf, (uniform.to(cdf.device) * cdf[:, -1]).unsqueeze(1)).clamp(max=cdf.shape[1] - 1)
        return torch.full_like(scores, -math.inf).scatter(1, token, 0.0)


class LLMSeqPrompt(SequentialRecommender):
    input_type = InputType.POINTWISE
    # what check_settings checks before anything trains (recbole_llmsrec.config)
    uses_llm = uses_item_text = True

    PROMPT_HEADER = "A user interacted with these items, in this order:\n"
    SEPARATOR = "###\n"

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.history_len = config["prompt_history_len"]
        self.num_samples = config["llmseqprompt_num_samples"]
        self.temperature = config["llmseqprompt_temperature"]
        self.top_p = config["llmseqprompt_top_p"]
        self.max_new_tokens = config["llmseqprompt_max_new_tokens"]
        self.llm_batch_size = config["llm_batch_size"]
        self.shared_prefill = config["llmseqprompt_shared_prefill"]
        seed = config["llmseqprompt_sample_seed"]
        self.sample_seed = config["seed"] if seed is None else seed

        model, self.tokenizer = load_causal_lm(
            config["llm_path"], config["llm_dtype"], config["device"], config["llm_cache_dir"]
        )
        self.llm = add_lora(model, config)
        self.eos_id = self.tokenizer.eos_token_id
        if self.eos_id is None:
            raise ValueError(f"the tokenizer of {config['llm_path']!r} has no end-of-sequence token to stop titles with")
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_id

        texts = read_item_text(config, dataset)
        self.title_tokens = [self.tokenizer(f" {text}", add_special_tokens=False).input_ids for text in texts]
        self.header = self.tokenizer(self.PROMPT_HEADER).input_ids  # with the tokenizer's own BOS, if any
        self.separator = self.tokenizer(self.SEPARATOR, add_special_tokens=False).input_ids
        self.newline = self.tokenizer("\n", add_special_tokens=False).input_ids
        # a title ends at its line: generation stops at EOS or at a newline token (the text after one
        # is cut anyway), instead of running on to max_new_tokens through further lines
        self.stop_ids = [self.eos_id] + (self.newline if len(self.newline) == 1 and self.newline != [self.eos_id] else [])
        self._numbers = {}
        # catalogue vectors for mapping generated text back to items, from the shared cache
        self.register_buffer("item_text_vectors", F.normalize(item_text_embeddings(config, dataset, texts), dim=-1),
                             persistent=False)
        self._encoder_settings = dict(
            path=config["text_encoder_path"], pooling=config["text_encoder_pooling"],
            normalize=config["text_encoder_normalize"], max_length=config["text_encoder_max_length"],
            device=config["device"],
        )
        self._encoder = None
        self._user_scores = {}

    # Generated titles depend on the adapters: entering training mode or loading a checkpoint
    # clears what was computed.
    def forget_titles(self):
        """Drop the scores of every history generated for so far: the next pass samples anew."""
        self._user_scores = {}

    def train(self, mode=True):
        super().train(mode)
        if mode:
            self.forget_titles()
        return self

    def load_state_dict(self, state_dict, strict=True, assign=False):
        self.forget_titles()
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # ---- prompts ---------------------------------------------------------------------------

    def _number(self, k):
        if k not in self._numbers:
            self._numbers[k] = self.tokenizer(f"{k}.", add_special_tokens=False).input_ids
        return self._numbers[k]

    def prompt_ids(self, items):
        """Token ids of the prompt over ``items`` (oldest first): a numbered title list, then ``###``."""
        ids = list(self.header)
        for k, item in enumerate(items, start=1):
            ids += self._number(k) + self.title_tokens[item] + self.newline
        return ids + self.separator

    # ---- training --------------------------------------------------------------------------

    def calculate_loss(self, interaction):
        """Next-title language-model loss on the completion tokens only (the prompt is context)."""
        histories, _ = history_windows(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN], self.history_len)
        targets = interaction[self.POS_ITEM_ID].tolist()
        rows = []
        for history, target in zip(histories, targets):
            prompt = self.prompt_ids(history)
            rows.append((prompt, self.title_tokens[target] + [self.eos_id]))
        width = max(len(p) + len(c) for p, c in rows)
        device = interaction[self.ITEM_SEQ].device
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long, device=device)
        labels = torch.full_like(input_ids, -100)
        attention_mask = torch.zeros_like(input_ids)
        for r, (prompt, completion) in enumerate(rows):
            full = prompt + completion
            input_ids[r, : len(full)] = torch.tensor(full, device=device)
            labels[r, len(prompt) : len(full)] = torch.tensor(completion, device=device)
            attention_mask[r, : len(full)] = 1
        return self.llm(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss

    # ---- generation and mapping ------------------------------------------------------------

    @torch.no_grad()
    def generate_titles(self, histories, users=None):
        """``num_samples`` generated next-item titles per history (greedy when temperature is 0).

        Sampling seeds each title by (``sample_seed``, user, sample number); without ``users``, by
        the prompt itself.
        """
        per_row = self.num_samples if self.temperature > 0 else 1
        prompts = [self.prompt_ids(history) for history in histories]
        seeds = None if users is None else [stream_seed(self.sample_seed, user) for user in users]
        texts = self.decode_titles(self._generate(prompts, per_row, seeds=seeds)[:, max(map(len, prompts)) :])
        return [texts[r * per_row : (r + 1) * per_row] for r in range(len(prompts))]

    def decode_titles(self, new_tokens):
        """One title per row of generated tokens: the text of its first line."""
        texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        return [text.split("\n")[0].strip() for text in texts]

    def _generate(self, prompts, per_row, seeds=None, **extra):
        """``generate`` over left-padded ``prompts``, ``per_row`` sequences each (``extra`` goes to it).

        When sampling, ``seeds`` (one per prompt; default: from the prompt's tokens) seed the random
        stream of each of its ``per_row`` sequences (see ``RowSampler``).

        With ``llmseqprompt_shared_prefill`` (the default), each prompt is read once and its keys and
        values are repeated for its samples; ``generate`` alone would read every prompt ``per_row``
        times. The logits agree to float rounding, so the samples are the same but for a draw that
        falls within that rounding of a boundary between two tokens.
        """
        width = max(map(len, prompts))
        device = self.item_text_vectors.device
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long, device=device)
        attention_mask = torch.zeros_like(input_ids)
        for r, prompt in enumerate(prompts):  # left padding: generation continues every row at the end
            input_ids[r, width - len(prompt) :] = torch.tensor(prompt, device=device)
            attention_mask[r, width - len(prompt) :] = 1
        settings = dict(max_new_tokens=self.max_new_tokens, do_sample=False, temperature=None, top_p=None,
                        top_k=None, pad_token_id=self.pad_id, eos_token_id=self.stop_ids, **extra)
        if self.temperature > 0:  # sampled by RowSampler, decoded greedily (rows in num_return_sequences order)
            if seeds is None:
                seeds = [stream_seed(self.sample_seed, tuple(prompt)) for prompt in prompts]
            row_seeds = [stream_seed(seed, sample) for seed in seeds for sample in range(per_row)]
            settings["logits_processor"] = LogitsProcessorList(
                [RowSampler(row_seeds, self.temperature, self.top_p, input_ids.device)])
        if per_row == 1 or not self.shared_prefill or width < 2:
            # each prompt repeated per_row times, as num_return_sequences would (greedy decoding refuses it)
            return self.llm.generate(input_ids=input_ids.repeat_interleave(per_row, 0),
                                     attention_mask=attention_mask.repeat_interleave(per_row, 0), **settings)
        # every prompt but its last token, once per user, at the positions generate() derives from
        # the attention mask; generate() then runs from that last token over the repeated cache
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        prefill = self.llm(
            input_ids=input_ids[:, :-1], attention_mask=attention_mask[:, :-1],
            position_ids=positions[:, :-1], use_cache=True, logits_to_keep=1,
        )
        cache = output_cache(prefill)
        cache.batch_repeat_interleave(per_row)  # the row order of num_return_sequences
        return self.llm.generate(
            input_ids=input_ids.repeat_interleave(per_row, 0),
            attention_mask=attention_mask.repeat_interleave(per_row, 0),
            **cache_kwargs(self.llm, cache), **settings,
        )

    def map_to_catalogue(self, generated):
        """Score every catalogue item for each list of generated titles: ``[len(generated), n_items]``.

        An item's score is its highest cosine similarity to one of the user's generated titles; an
        empty generation matches nothing (score 0).
        """
        if self._encoder is None:
            self._encoder = TextEncoder(**self._encoder_settings)
        flat = [text for texts in generated for text in texts]
        vectors = F.normalize(self._encoder.encode(flat), dim=-1).to(self.item_text_vectors.device)
        vectors[[i for i, text in enumerate(flat) if not text]] = 0
        similarity = vectors @ self.item_text_vectors.T
        scores, start = [], 0
        for texts in generated:
            scores.append(similarity[start : start + len(texts)].max(0).values)
            start += len(texts)
        scores = torch.stack(scores)
        scores[:, 0] = -math.inf
        return scores

    def _user_item_scores(self, interaction):
        """Scores of every item per row; each distinct (user, history) is generated for once."""
        item_seq, item_seq_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        keys = [tuple(row) for row in torch.cat([item_seq_len.unsqueeze(1), item_seq], 1).tolist()]
        owner = dict(zip(keys, interaction[self.USER_ID].tolist())) if self.USER_ID in interaction else {}
        todo = sorted({key for key in keys if key not in self._user_scores})
        for start in range(0, len(todo), self.llm_batch_size):
            chunk = todo[start : start + self.llm_batch_size]
            histories = [list(key[1 : 1 + key[0]])[-self.history_len :] for key in chunk]
            users = [owner[key] for key in chunk] if owner else None
            scores = self.map_to_catalogue(self.generate_titles(histories, users))
            for key, row in zip(chunk, scores):
                full_history = torch.tensor(key[1 : 1 + key[0]], dtype=torch.long, device=row.device)
                self._user_scores[key] = row.index_fill(0, full_history, -math.inf)  # seen items last
        return torch.stack([self._user_scores[key] for key in keys])

    def full_sort_predict(self, interaction):
        return self._user_item_scores(interaction)

    def predict(self, interaction):
        scores = self._user_item_scores(interaction)
        return scores.gather(1, interaction[self.ITEM_ID].unsqueeze(1)).squeeze(1)
