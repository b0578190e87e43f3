r"""
TALLRec
################################################

Reference:
    Keqin Bao et al. "TALLRec: An Effective and Efficient Tuning Framework to Align Large Language
    Model with Recommendation" in RecSys 2023.

An LLM, fine-tuned with LoRA, reads an instruction, the titles a user liked and a target title,
and answers Yes or No. Text only: no collaborative embeddings.

``scoring: native`` is the paper's form: trained on Yes (the user's next item) and No (sampled
items) answers; a candidate's score is logit(Yes) - logit(No) at the answer position. The prompt
up to the candidate is shared by all of a user's candidates, so it runs once and its KV cache
serves every candidate. ``scoring: retrieval`` is the form the LLM-SRec paper compared TALLRec in:
text-only user and item prompts ending in ``[UserOut]`` / ``[ItemOut]``, LoRA and the two heads
trained with a retrieval loss, scored by a dot product (``full_sort_predict`` included).
"""

import torch
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from torch.nn import functional as F

from recbole_llmsrec.llm.backbone import LLMBackbone
from recbole_llmsrec.llm.scoring import (
    break_ties,
    label_loss,
    last_token_logits,
    naive_next_token_logits,
    next_token_logits,
    seeded_generator,
)
from recbole_llmsrec.llm.text import PromptBuilder, history_windows, read_item_text
from recbole_llmsrec.model.retrieval import LLMRetrievalMixin

SCORING_MODES = ("native", "retrieval")


def check_scoring(config, model):
    if config["scoring"] not in SCORING_MODES:
        raise ValueError(f"scoring must be one of {SCORING_MODES} for {model}, not {config['scoring']!r}")
    return config["scoring"]


class TALLRec(LLMRetrievalMixin, SequentialRecommender):
    input_type = InputType.POINTWISE
    # what check_settings checks before anything trains (recbole_llmsrec.config)
    uses_llm = uses_item_text = True

    # the Yes/No prompt, instruction / input / response ({noun}: item_noun)
    INSTRUCTION = (
        "### Instruction:\nGiven the {noun}s a user liked, decide whether the user will like the target "
        "{noun}. Answer with Yes or No only.\n\n### Input:\nThe user liked these {noun}s: "
    )
    LIKED_END = ".\n"
    QUESTION = "Will the user like the {noun} "
    ANSWER_CUE = "?\n\n### Response:\n"

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.scoring = check_scoring(config, type(self).__name__)
        self.prompt_history_len = config["prompt_history_len"]
        self.native_neg_num = config["native_neg_num"]
        self.native_full_sort = config["native_full_sort"]
        self.train_on_prompt = config["train_on_prompt"]
        self.llm_batch_size = config["llm_batch_size"]
        self.seed = config["seed"]

        self.llm = LLMBackbone.from_config(config, lora=True)
        self.item_texts = read_item_text(config, dataset)
        self.prompts = self.prompt_builder(config, soft_tokens=False)
        noun = config["item_noun"]
        self.instruction = list(self.prompts.bos) + list(self.prompts.piece(self.INSTRUCTION.format(noun=noun)))
        self.liked_end = list(self.prompts.piece(self.LIKED_END))
        self.question = list(self.prompts.piece(self.QUESTION.format(noun=noun)))
        self.answer_cue = list(self.prompts.piece(self.ANSWER_CUE))
        # the answer tokens as the prompt pieces produce them (first token of each word)
        yes, no = self.prompts.piece("Yes"), self.prompts.piece("No")
        if yes[0] == no[0]:
            raise ValueError(f"the tokenizer of {config['llm_path']!r} starts 'Yes' and 'No' with the same token")
        self.yes_id, self.no_id = yes[0], no[0]
        if self.scoring == "retrieval":
            self.init_retrieval(config, dataset)

    def prompt_builder(self, config, soft_tokens):
        return PromptBuilder(
            self.llm.tokenizer, self.item_texts, max_item_tokens=config["item_text_max_tokens"],
            timestamp_unit=config["timestamp_unit"], soft_tokens=soft_tokens,
        )

    # ---- the Yes/No prompt: a prefix per user, a suffix per candidate --------------------------

    def yes_no_prefix(self, history):
        """Token ids of the instruction and the liked titles (shared by all of a user's candidates)."""
        return self.instruction + self.prompts.title_list(history, markers=False) + self.liked_end

    def yes_no_suffix(self, item):
        """Token ids of the question about one candidate, up to the answer position."""
        return self.question + self.prompts.item_tokens[item] + self.answer_cue

    def prefix_soft_tokens(self, item_seq, item_seq_len):
        """Soft tokens of each sequence's prefix (``{token_id: [B, d_llm]}``): none, TALLRec is text only."""
        return {}

    def suffix_soft_tokens(self, items):
        """Soft tokens of each candidate's suffix (``{token_id: [n, d_llm]}``): none."""
        return {}

    def yes_no_score(self, logits):
        """The score of a candidate from its ``[Yes, No]`` logits."""
        return logits[:, 0] - logits[:, 1]

    # ---- native training -------------------------------------------------------------------------

    def yes_no_loss(self, logits, labels):
        """Answer-only tuning: cross-entropy over the vocabulary at the answer position."""
        targets = torch.where(labels.bool(), self.yes_id, self.no_id)
        return F.cross_entropy(logits, targets)

    def native_loss(self, interaction):
        """Each sequence's target is a Yes example, ``native_neg_num`` sampled items are No examples."""
        item_seq, item_seq_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        target = interaction[self.POS_ITEM_ID]
        items = torch.cat([target.unsqueeze(1), self.sample_negatives(item_seq, target, self.native_neg_num)], 1)
        labels = torch.zeros_like(items, dtype=torch.float)
        labels[:, 0] = 1.0
        labels = labels.flatten()
        windows, _ = history_windows(item_seq, item_seq_len, self.prompt_history_len)
        sequences = [self.yes_no_prefix(history) + self.yes_no_suffix(item)
                     for history, row in zip(windows, items.tolist()) for item in row]
        soft = {token: vectors.repeat_interleave(items.shape[1], 0)
                for token, vectors in self.prefix_soft_tokens(item_seq, item_seq_len).items()}
        soft.update(self.suffix_soft_tokens(items.flatten()))
        if self.train_on_prompt:
            return self.whole_prompt_loss(sequences, labels, soft)
        input_ids, mask = self.prompts.pad(sequences, target.device, left=True)
        logits = last_token_logits(self.llm.model, self.llm.embed(input_ids, soft), mask)
        return self.yes_no_loss(logits, labels)

    def whole_prompt_loss(self, sequences, labels, soft):
        """TALLRec's released training: the language-model loss over the prompt and the answer."""
        answers = torch.where(labels.bool(), self.yes_id, self.no_id).tolist()
        sequences = [sequence + [answer] for sequence, answer in zip(sequences, answers)]
        input_ids, mask = self.prompts.pad(sequences, labels.device)
        label_ids = input_ids.masked_fill(mask == 0, -100)
        return label_loss(self.llm.model, self.llm.embed(input_ids, soft), mask, label_ids)

    # ---- native scoring --------------------------------------------------------------------------

    def yes_no_scores(self, item_seq, item_seq_len, items, cached=True):
        """Scores of ``items`` for one user (``item_seq``: ``[1, L]``); the prompt prefix runs once when ``cached``."""
        history = history_windows(item_seq, item_seq_len, self.prompt_history_len)[0][0]
        prefix_ids = torch.tensor([self.yes_no_prefix(history)], device=item_seq.device)
        prefix = self.llm.embed(prefix_ids, self.prefix_soft_tokens(item_seq, item_seq_len))[0]
        score = next_token_logits if cached else naive_next_token_logits
        logits = score(self.llm.model, prefix, self.candidate_suffixes(items), token_ids=[self.yes_id, self.no_id],
                       chunk_size=self.llm_batch_size)
        return self.yes_no_score(logits)

    def candidate_suffixes(self, items):
        """Each candidate's suffix: token ids, or input embeddings when it holds a soft token."""
        sequences = [self.yes_no_suffix(item) for item in items.tolist()]
        soft = self.suffix_soft_tokens(items)
        if not soft:
            return sequences
        input_ids, _ = self.prompts.pad(sequences, items.device)
        embeds = self.llm.embed(input_ids, soft)
        return [row[: len(sequence)] for row, sequence in zip(embeds, sequences)]

    def native_predict(self, interaction, cached=True):
        """One score per row; the rows of one user share their prompt prefix."""
        item_seq, item_seq_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        users, items = interaction[self.USER_ID], interaction[self.ITEM_ID]
        key = torch.cat([users.unsqueeze(1), item_seq_len.unsqueeze(1), item_seq], dim=1)
        _, inverse = torch.unique(key, dim=0, return_inverse=True)
        scores = torch.empty(len(items), device=items.device)
        for group in inverse.unique().tolist():
            rows = (inverse == group).nonzero().squeeze(1)
            first = rows[:1]
            raw = self.yes_no_scores(item_seq[first], item_seq_len[first], items[rows], cached=cached)
            scores[rows] = break_ties(raw, seeded_generator(self.seed, users[first])).to(scores.device)
        return scores

    def native_full_sort_predict(self, interaction):
        if not self.native_full_sort:
            raise ValueError(
                f"{type(self).__name__} with scoring: native scores one prompt per candidate, so full ranking "
                f"runs one prompt suffix per item for every user; use eval_args mode uniN, or scoring: "
                f"retrieval, or set native_full_sort: True to score every item anyway"
            )
        item_seq, item_seq_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        users = interaction[self.USER_ID]
        all_items = torch.arange(1, self.n_items, device=item_seq.device)
        rows = []
        for row in range(len(users)):
            raw = self.yes_no_scores(item_seq[row : row + 1], item_seq_len[row : row + 1], all_items)
            scores = break_ties(raw, seeded_generator(self.seed, users[row])).to(item_seq.device)
            rows.append(torch.cat([scores.new_full((1,), -torch.inf), scores]))
        return torch.stack(rows)

    # ---- RecBole's surface -----------------------------------------------------------------------

    def calculate_loss(self, interaction):
        if self.scoring == "retrieval":
            return self.retrieval_loss(interaction)[0]
        return self.native_loss(interaction)

    def predict(self, interaction):
        if self.scoring == "retrieval":
            return self.retrieval_predict(interaction)
        return self.native_predict(interaction)

    def full_sort_predict(self, interaction):
        if self.scoring == "retrieval":
            return self.retrieval_full_sort_predict(interaction)
        return self.native_full_sort_predict(interaction)
