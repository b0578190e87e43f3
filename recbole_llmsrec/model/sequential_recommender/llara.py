r"""
LLaRA
################################################

Reference:
    Jiayi Liao et al. "LLaRA: Large Language-Recommendation Assistant" in SIGIR 2024.

Hybrid item tokens: every title in the prompt is followed by a soft token, the frozen SASRec
teacher's item embedding through a projector (two linear layers with a GELU). The LLM is tuned
with LoRA, and a curriculum moves from text-only prompts to hybrid ones: at training step t of T a
batch is hybrid with probability t/T (the step comes from :class:`~recbole_llmsrec.trainer.LLaRATrainer`),
otherwise its placeholders keep their own frozen embedding (the paper's ``[PH]``) and the projector
gets no gradient. Evaluation always uses hybrid prompts.

``scoring: native`` is the paper's form: the prompt lists the history and a shuffled candidate
list, the model learns to write the target's title, and a candidate's score is the
log-likelihood of its title (with the prompt's KV cache computed once per prompt).
``scoring: retrieval`` is the form the LLM-SRec paper compared LLaRA in: hybrid user and item
prompts ending in ``[UserOut]`` / ``[ItemOut]``, scored by a dot product (``full_sort_predict``
included); the curriculum applies to its training batches too.
"""

import math

import torch
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType

from recbole_llmsrec.llm.backbone import LLMBackbone
from recbole_llmsrec.llm.scoring import (
    answer_labels,
    break_ties,
    continuation_logprobs,
    label_loss,
    naive_continuation_logprobs,
    seeded_generator,
    shuffled_candidates,
)
from recbole_llmsrec.llm.text import PromptBuilder, history_windows, read_item_text
from recbole_llmsrec.model.layers import ProjectionMLP
from recbole_llmsrec.model.retrieval import LLMRetrievalMixin
from recbole_llmsrec.model.sequential_recommender.tallrec import check_scoring
from recbole_llmsrec.teacher import load_teacher


class LLaRA(LLMRetrievalMixin, SequentialRecommender):
    input_type = InputType.POINTWISE
    # what check_settings checks before anything trains (recbole_llmsrec.config)
    uses_llm = uses_item_text = uses_teacher = True

    # the candidate-list prompt ({noun}: item_noun)
    HISTORY = "This user has interacted with these {noun}s, oldest first: "
    CANDIDATES = ". Choose the {noun} the user will interact with next from these candidates: "
    ANSWER_CUE = ".\nAnswer: "

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.scoring = check_scoring(config, "LLaRA")
        self.prompt_history_len = config["prompt_history_len"]
        self.prompt_candidates = config["prompt_candidates"]
        self.curriculum = config["llara_curriculum"]
        self.llm_batch_size = config["llm_batch_size"]
        self.seed = config["seed"]
        if self.prompt_candidates < 2:
            raise ValueError(f"prompt_candidates must be at least 2 (the target and a negative), not {self.prompt_candidates}")
        if self.scoring == "native":
            check_whole_user_blocks(config)

        self.teacher = load_teacher(config, dataset)
        self.llm = LLMBackbone.from_config(config, lora=True)
        self.prompts = PromptBuilder(
            self.llm.tokenizer, read_item_text(config, dataset), max_item_tokens=config["item_text_max_tokens"],
            timestamp_unit=config["timestamp_unit"], soft_tokens=True,
        )
        self.projector = ProjectionMLP(self.teacher.hidden_size, self.llm.hidden_size, self.llm.hidden_size, "gelu", norm=False)
        noun = config["item_noun"]
        self.history_intro = list(self.prompts.bos) + list(self.prompts.piece(self.HISTORY.format(noun=noun)))
        self.candidates_intro = list(self.prompts.piece(self.CANDIDATES.format(noun=noun)))
        self.answer_cue = list(self.prompts.piece(self.ANSWER_CUE))
        self.terminator = list(self.prompts.piece("\n"))
        # share of hybrid training batches, set by LLaRATrainer before each batch (1: always hybrid)
        self.curriculum_progress = 1.0
        self.hybrid = True
        if self.scoring == "retrieval":
            self.init_retrieval(config, dataset)

    def train(self, mode=True):
        super().train(mode)
        self.teacher.train(False)
        if not mode:
            self.hybrid = True  # evaluation always uses hybrid prompts
        return self

    # ---- hybrid item tokens ------------------------------------------------------------------------

    def item_soft_tokens(self, items):
        """The projected teacher embeddings of ``items``, or None in a text-only curriculum batch."""
        return self.projector(self.teacher.item_embedding(items)) if self.hybrid else None

    def draw_hybrid(self):
        """Whether this training batch uses hybrid prompts: with probability ``curriculum_progress``."""
        if not self.curriculum:
            return True
        return bool(torch.rand(()) < self.curriculum_progress)

    # ---- the candidate-list prompt -----------------------------------------------------------------

    def listwise_prompt(self, history, candidates):
        """Token ids of the prompt, and the items of its placeholders in order (history, then candidates)."""
        ids = self.history_intro + self.prompts.title_list(history) + self.candidates_intro
        ids += self.prompts.title_list(candidates)
        return ids + self.answer_cue, list(history) + list(candidates)

    def answer(self, item):
        return self.prompts.item_tokens[item] + self.terminator

    def embed_prompts(self, sequences, items, device, left=False):
        input_ids, mask = self.prompts.pad(sequences, device, left=left)
        vectors = self.item_soft_tokens(torch.tensor(items, dtype=torch.long, device=device))
        soft = {self.prompts.history_emb_id: vectors} if vectors is not None else {}
        return self.llm.embed(input_ids, soft), mask

    # ---- native training ---------------------------------------------------------------------------

    def native_loss(self, interaction):
        """Language-model loss on the target's title after a prompt with ``prompt_candidates`` shuffled candidates."""
        item_seq, item_seq_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        target = interaction[self.POS_ITEM_ID]
        negatives = self.sample_negatives(item_seq, target, self.prompt_candidates - 1)
        candidates = shuffled_candidates(target, negatives).tolist()
        windows, _ = history_windows(item_seq, item_seq_len, self.prompt_history_len)
        prompts, soft_items = zip(*(self.listwise_prompt(h, c) for h, c in zip(windows, candidates)))
        answers = [self.answer(item) for item in target.tolist()]
        sequences = [prompt + answer for prompt, answer in zip(prompts, answers)]
        embeds, mask = self.embed_prompts(sequences, [item for items in soft_items for item in items], target.device)
        return label_loss(self.llm.model, embeds, mask, answer_labels(prompts, answers, mask.shape[1], target.device))

    # ---- native scoring ----------------------------------------------------------------------------

    def listwise_scores(self, history, candidates, generator, cached=True):
        """Log-likelihood of each candidate's title (+ terminator) in prompts listing the candidates.

        The candidates are shuffled by ``generator`` and listed ``prompt_candidates`` per prompt;
        each is scored in the prompt that lists it.
        """
        order = torch.randperm(len(candidates), generator=generator).tolist()
        scores = torch.empty(len(candidates))
        n_prompts = math.ceil(len(candidates) / self.prompt_candidates)
        score = continuation_logprobs if cached else naive_continuation_logprobs
        for k in range(n_prompts):
            index = order[k::n_prompts]  # prompts of (nearly) equal size
            listed = [candidates[i] for i in index]
            prompt, items = self.listwise_prompt(history, listed)
            device = self.projector[0].weight.device
            embeds, _ = self.embed_prompts([prompt], items, device)
            answers = [self.answer(item) for item in listed]
            scores[index] = score(self.llm.model, embeds[0], answers, chunk_size=self.llm_batch_size).cpu()
        return scores

    def native_predict(self, interaction, cached=True):
        """Per user (a contiguous block of rows): its candidates listed in shuffled prompts, one score per row."""
        users, items = interaction[self.USER_ID], interaction[self.ITEM_ID]
        item_seq, item_seq_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        windows, _ = history_windows(item_seq, item_seq_len, self.prompt_history_len)
        scores = torch.empty(len(items), device=items.device)
        start = 0
        for size in torch.unique_consecutive(users, return_counts=True)[1].tolist():
            generator = seeded_generator(self.seed, users[start])
            raw = self.listwise_scores(windows[start], items[start : start + size].tolist(), generator, cached=cached)
            scores[start : start + size] = break_ties(raw, generator).to(scores.device)
            start += size
        return scores

    # ---- RecBole's surface -------------------------------------------------------------------------

    def calculate_loss(self, interaction):
        self.hybrid = self.draw_hybrid()
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
        raise ValueError(
            "LLaRA with scoring: native scores only the candidates listed in its prompt, so it cannot rank "
            "every item; use eval_args mode uniN, or scoring: retrieval"
        )


def check_whole_user_blocks(config):
    """Listwise scoring needs each user's 1 + N evaluation rows in one ``predict`` call."""
    for phase in ("valid", "test"):
        sampling = config[f"{phase}_neg_sample_args"]
        if not sampling or sampling.get("distribution") in (None, "none"):
            continue
        block = 1 + sampling["sample_num"]
        if config["eval_batch_size"] < block:
            raise ValueError(
                f"scoring: native lists each user's {block} {phase} candidates in its prompts, so one batch must "
                f"hold all of them: set eval_batch_size to a multiple of {block} (now {config['eval_batch_size']})"
            )
