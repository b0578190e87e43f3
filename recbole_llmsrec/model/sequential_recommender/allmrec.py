r"""
ALLMRec
################################################

Reference:
    Sein Kim et al. "Large Language Models meet Collaborative Filtering: An Efficient All-round
    LLM-based Recommender System" in KDD 2024.

Stage 1 aligns the frozen SASRec teacher's item embeddings with the items' text vectors through
two autoencoders (matching, two reconstruction and a recommendation loss); its item encoder gives
every item a joint collaborative-text embedding. Stage 2 projects the teacher's user state and
those item embeddings into a frozen LLM: the user vector opens the prompt as a soft token, and
each title is followed by its item's soft token. Only the autoencoders (stage 1) and the two
projectors (stage 2) train; the LLM, the teacher and the text encoder stay frozen.

``scoring: retrieval`` (default) is the form the LLM-SRec paper compared A-LLMRec in: the user
prompt ends in ``[UserOut]``, item prompts in ``[ItemOut]``, trained with a retrieval loss, scored
by a dot product (``full_sort_predict`` included). ``scoring: title_likelihood`` is the original
form: a prompt lists the user's candidates (shuffled), stage 2 learns to write the target's title,
and a candidate's score is the log-likelihood of its title given that prompt. :meth:`generate_text`
lets the aligned LLM answer a question about a user in words.
"""

import torch
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from torch import nn
from torch.nn import functional as F

from recbole_llmsrec.llm.backbone import LLMBackbone
from recbole_llmsrec.llm.encoder import item_text_embeddings
from recbole_llmsrec.llm.scoring import answer_labels, label_loss, seeded_generator, shuffled_candidates
from recbole_llmsrec.llm.text import PromptBuilder, history_windows, read_item_text
from recbole_llmsrec.model.layers import ProjectionMLP
from recbole_llmsrec.model.retrieval import LLMRetrievalMixin
from recbole_llmsrec.teacher import load_teacher

SCORING_MODES = ("retrieval", "title_likelihood")


class AutoEncoder(nn.Module):
    """A-LLMRec's 1-layer autoencoder: Linear + sigmoid to the latent, Linear back."""

    def __init__(self, in_dim, latent_dim):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(in_dim, latent_dim), nn.Sigmoid())
        self.decoder = nn.Linear(latent_dim, in_dim)

    def forward(self, x):
        latent = self.encoder(x)
        return latent, self.decoder(latent)


class ALLMRec(LLMRetrievalMixin, SequentialRecommender):
    input_type = InputType.POINTWISE
    # what check_settings checks before anything trains (recbole_llmsrec.config)
    uses_llm = uses_item_text = uses_teacher = True

    # the listwise prompt of ``scoring: title_likelihood`` and of generation ({noun}: item_noun)
    USER_INTRO = " is a user representation. This user has interacted with the following {noun}s, oldest first: "
    CANDIDATES = ". Recommend one next {noun} for this user from the following {noun} titles: "
    ANSWER = ". The recommended {noun} is "

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.scoring = config["scoring"]
        if self.scoring not in SCORING_MODES:
            raise ValueError(f"scoring must be one of {SCORING_MODES} for ALLMRec, not {self.scoring!r}")
        self.stage1_settings = {
            "epochs": config["allmrec_stage1_epochs"],
            "learning_rate": config["allmrec_stage1_learning_rate"],
            "checkpoint": config["allmrec_stage1_checkpoint"],
        }
        self.stage2_settings = {"epochs": config["epochs"], "learning_rate": config["learning_rate"], "checkpoint": None}
        self.item_recon_weight = config["allmrec_item_recon_weight"]
        self.text_recon_weight = config["allmrec_text_recon_weight"]
        self.num_candidates = config["allmrec_num_candidates"]
        self.max_new_tokens = config["allmrec_max_new_tokens"]
        self.seed = config["seed"]
        noun = config["item_noun"]
        self.stage = "stage2"

        self.teacher = load_teacher(config, dataset)
        texts = read_item_text(config, dataset)
        self.register_buffer("item_text_vectors", item_text_embeddings(config, dataset, texts).float(), persistent=False)
        d_cf, d_text, latent = self.teacher.hidden_size, self.item_text_vectors.shape[1], config["allmrec_latent_dim"]
        self.item_autoencoder = AutoEncoder(d_cf, latent)  # f_I: enc_I / dec_I
        self.text_autoencoder = AutoEncoder(d_text, latent)  # f_T: enc_T / dec_T

        self.llm = LLMBackbone.from_config(config)
        self.prompts = PromptBuilder(
            self.llm.tokenizer, texts, max_item_tokens=config["item_text_max_tokens"],
            timestamp_unit=config["timestamp_unit"],
        )
        d_llm = self.llm.hidden_size
        self.user_proj = ProjectionMLP(d_cf, d_llm, d_llm, "leaky_relu")  # F_U
        self.item_proj = ProjectionMLP(latent, d_llm, d_llm, "gelu")  # F_I
        stage2 = ("user_proj", "item_proj")
        if self.scoring == "retrieval":
            self.init_retrieval(config, dataset)
            stage2 += ("user_head", "item_head", "user_out_token", "item_out_token")
        else:
            self.prompt_history_len = config["prompt_history_len"]
            self.clear_cache()
        self.training_stages = {"stage1": ("item_autoencoder", "text_autoencoder"), "stage2": stage2}

        self.eos_id = self.llm.tokenizer.eos_token_id
        if self.eos_id is None:
            raise ValueError(f"the tokenizer of {config['llm_path']!r} has no end-of-sequence token to end titles with")
        self.user_intro = list(self.prompts.piece(self.USER_INTRO.format(noun=noun)))
        self.candidates_intro = list(self.prompts.piece(self.CANDIDATES.format(noun=noun)))
        self.answer_cue = list(self.prompts.piece(self.ANSWER.format(noun=noun)))

    # ---- stages (driven by StagedTrainer) -------------------------------------------------------

    def set_stage(self, stage):
        self.stage = stage
        self.clear_cache()

    def stage_settings(self, stage):
        return self.stage1_settings if stage == "stage1" else self.stage2_settings

    def train(self, mode=True):
        super().train(mode)
        self.teacher.train(False)
        return self

    # ---- the joint collaborative-text item embedding and the soft tokens -------------------------

    def joint_item_embedding(self, items):
        """enc_I of the teacher's item embeddings: the stage-1 latent ``[n, latent]``."""
        return self.item_autoencoder.encoder(self.teacher.item_embedding(items))

    def item_soft_tokens(self, items):
        return self.item_proj(self.joint_item_embedding(items))

    def user_soft_prefix(self, item_seq, item_seq_len):
        with torch.no_grad():
            state = self.teacher(item_seq, item_seq_len)
        return self.user_proj(state)

    # ---- stage 1 ---------------------------------------------------------------------------------

    def stage1_loss(self, interaction):
        item_seq, item_seq_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        target = interaction[self.POS_ITEM_ID]
        negative = self.sample_negatives(item_seq, target, 1).squeeze(1)
        items = torch.stack([target, negative], dim=1)  # [B, 2]: positive, negative
        with torch.no_grad():
            user_state = self.teacher(item_seq, item_seq_len)
            collab = self.teacher.item_embedding(items)
            text = self.item_text_vectors[items]
        item_latent, item_recon = self.item_autoencoder(collab)
        text_latent, text_recon = self.text_autoencoder(text)
        matching = F.mse_loss(item_latent, text_latent)
        item_reconstruction = self.item_recon_weight * F.mse_loss(item_recon, collab)
        text_reconstruction = self.text_recon_weight * F.mse_loss(text_recon, text)
        logits = (item_recon * user_state.unsqueeze(1)).sum(-1)
        labels = torch.tensor([1.0, 0.0], device=logits.device).expand_as(logits)
        recommendation = F.binary_cross_entropy_with_logits(logits, labels)
        return matching, item_reconstruction, text_reconstruction, recommendation

    def _stage1_user_and_items(self, interaction):
        """Teacher user states per row (each distinct history once: uniN repeats it N+1 times) and decoded items."""
        item_seq, item_seq_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        histories, inverse = torch.unique(torch.cat([item_seq_len.unsqueeze(1), item_seq], 1), dim=0, return_inverse=True)
        user_state = self.teacher(histories[:, 1:], histories[:, 0])[inverse]
        all_items = self.item_autoencoder(self.teacher.item_embedding.weight)[1]
        return user_state, all_items

    # ---- stage 2, title likelihood (the original A-LLMRec form) ----------------------------------

    def listwise_prompt(self, history, candidates):
        """Token ids of the candidate-list prompt, and the item ids of its soft tokens in order."""
        ids = list(self.prompts.bos) + [self.prompts.user_rep_id] + self.user_intro + self._titles(history)
        ids += self.candidates_intro + self._titles(candidates)
        return ids + self.answer_cue, list(history) + list(candidates)

    def _titles(self, items):
        """Quoted titles, each followed by its item's soft-token placeholder, comma separated."""
        return self.prompts.title_list(items)

    def answer(self, item):
        return self.prompts.item_tokens[item] + [self.eos_id]

    def _prompt_embeds(self, sequences, soft_items, item_seq, item_seq_len):
        """Right-padded input embeddings of prompts opening with [UserRep] and holding item soft tokens."""
        device = item_seq.device
        input_ids, attention_mask = self.prompts.pad(sequences, device)
        soft = {
            self.prompts.user_rep_id: self.user_soft_prefix(item_seq, item_seq_len),
            self.prompts.history_emb_id: self.item_soft_tokens(torch.tensor(soft_items, dtype=torch.long, device=device)),
        }
        return self.llm.embed(input_ids, soft), attention_mask

    def title_loss(self, interaction):
        """Causal-LM cross-entropy on the target's title (and EOS) after the candidate-list prompt."""
        item_seq, item_seq_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        target = interaction[self.POS_ITEM_ID]
        negatives = self.sample_negatives(item_seq, target, self.num_candidates - 1)
        candidates = shuffled_candidates(target, negatives).tolist()
        windows, _ = history_windows(item_seq, item_seq_len, self.prompt_history_len)
        prompts, soft_items = zip(*(self.listwise_prompt(h, c) for h, c in zip(windows, candidates)))
        answers = [self.answer(item) for item in target.tolist()]
        sequences = [prompt + answer for prompt, answer in zip(prompts, answers)]
        flat_items = [item for items in soft_items for item in items]
        embeds, attention_mask = self._prompt_embeds(sequences, flat_items, item_seq, item_seq_len)
        labels = answer_labels(prompts, answers, attention_mask.shape[1], embeds.device)
        return label_loss(self.llm.model, embeds, attention_mask, labels)

    def _user_generator(self, user):
        return seeded_generator(self.seed, user)

    def title_likelihood_predict(self, interaction, tie_break=True):
        """Per user block of rows: one prompt listing its candidates (shuffled), one score per row:
        the log-likelihood of the candidate's title, exact ties (equal titles) broken at random."""
        from recbole_llmsrec.llm.scoring import break_ties, continuation_logprobs

        users = interaction[self.USER_ID]
        item_seq, item_seq_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        items = interaction[self.ITEM_ID]
        scores = torch.empty(len(users), device=items.device)
        blocks = torch.unique_consecutive(users, return_counts=True)[1].tolist()
        if len(set(blocks)) > 1:
            raise ValueError(
                f"scoring: title_likelihood needs every user's candidates in one batch, got blocks of "
                f"{sorted(set(blocks))} rows; set eval_batch_size to a multiple of 1+N for eval mode uniN"
            )
        start = 0
        for size in blocks:
            rows = torch.arange(start, start + size, device=items.device)
            start += size
            generator = self._user_generator(users[rows[0]])
            order = torch.randperm(size, generator=generator).tolist()
            candidates = items[rows].tolist()
            history = history_windows(item_seq[rows[:1]], item_seq_len[rows[:1]], self.prompt_history_len)[0][0]
            prompt, soft_items = self.listwise_prompt(history, [candidates[i] for i in order])
            embeds, _ = self._prompt_embeds([prompt], soft_items, item_seq[rows[:1]], item_seq_len[rows[:1]])
            logprobs = continuation_logprobs(self.llm.model, embeds[0], [self.answer(item) for item in candidates]).float()
            scores[rows] = (break_ties(logprobs, generator) if tie_break else logprobs).to(scores.device)
        return scores

    # ---- RecBole's surface -----------------------------------------------------------------------

    def calculate_loss(self, interaction):
        if self.stage == "stage1":
            return self.stage1_loss(interaction)
        if self.scoring == "retrieval":
            return self.retrieval_loss(interaction)[0]
        return self.title_loss(interaction)

    def predict(self, interaction):
        if self.stage == "stage1":
            user_state, all_items = self._stage1_user_and_items(interaction)
            return (user_state * all_items[interaction[self.ITEM_ID]]).sum(-1)
        if self.scoring == "retrieval":
            return self.retrieval_predict(interaction)
        return self.title_likelihood_predict(interaction)

    def full_sort_predict(self, interaction):
        if self.stage == "stage1":
            user_state, all_items = self._stage1_user_and_items(interaction)
            return user_state @ all_items.T
        if self.scoring == "retrieval":
            return self.retrieval_full_sort_predict(interaction)
        raise NotImplementedError(
            "scoring: title_likelihood scores candidates listed inside a prompt, so it cannot rank the "
            "whole catalogue; use a sampled eval mode (e.g. eval_args mode uni19) or scoring: retrieval"
        )

    # ---- natural-language output -----------------------------------------------------------------

    def question_prompt(self, history, question):
        """Token ids of a prompt that introduces the user (as the listwise prompt does) and asks ``question``."""
        ids = list(self.prompts.bos) + [self.prompts.user_rep_id] + self.user_intro + self._titles(history)
        return ids + list(self.prompts.piece(". " + question.strip() + " "))

    @torch.no_grad()
    def generate_text(self, items, question, max_new_tokens=None):
        """The aligned LLM's answer to ``question`` about a user whose history is ``items`` (ids, oldest first)."""
        items = [int(item) for item in items][-self.max_seq_length :]
        if not items:
            raise ValueError("generate_text needs at least one item of the user's history")
        device = self.item_proj[0].weight.device
        item_seq = torch.tensor([items], dtype=torch.long, device=device)
        item_seq_len = torch.tensor([len(items)], device=device)
        history = items[-self.prompt_history_len :]
        ids = self.question_prompt(history, question)
        embeds, attention_mask = self._prompt_embeds([ids], history, item_seq, item_seq_len)
        tokenizer = self.llm.tokenizer
        output = self.llm.model.generate(
            inputs_embeds=embeds, attention_mask=attention_mask, do_sample=False, repetition_penalty=1.5,
            max_new_tokens=max_new_tokens or self.max_new_tokens,
            bad_words_ids=[[token_id] for token_id in self.llm.token_ids.values()],  # never a placeholder
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id,
        )
        return tokenizer.decode(output[0], skip_special_tokens=True).strip()
