"""Scoring many candidates that follow one shared prompt, with the prompt's KV cache computed once.

A user's prompt (instruction, history, soft tokens) is the same for every candidate; only a short
piece after it differs: the candidate's title (listwise log-likelihood, LLaRA / A-LLMRec) or the
question about the candidate (Yes/No, TALLRec / CoLLM). The prompt runs through the LLM once with
``use_cache=True``; its keys and values are then expanded over a chunk of candidates, and only the
candidate pieces run, with position ids that continue after the prompt and an attention mask that
covers prompt and piece. ``naive_*`` compute the same numbers with one full prompt per candidate;
they are the reference for tests and for measuring the speed-up.

``model`` is a Hugging Face causal LM (a peft-wrapped one too); ``prefix_embeds`` is one prompt's
input embeddings ``[P, d_llm]`` without padding (soft tokens already written in). Dropout follows
the model's mode: call these in eval mode (and under ``torch.no_grad()`` when scoring).
"""

import torch
from torch.nn import functional as F
from transformers import DynamicCache

from recbole_llmsrec.llm.cache import cache_kwargs, expanded_cache, output_cache


def _check_prefix(prefix_embeds):
    if prefix_embeds.dim() != 2 or prefix_embeds.shape[0] == 0:
        raise ValueError(f"prefix_embeds must be one unpadded prompt [P, d_llm], got shape {tuple(prefix_embeds.shape)}")


def _embed_piece(model, piece, device):
    """``[L, d_llm]`` input embeddings of one piece: token ids are embedded, a float tensor is used as is."""
    if torch.is_tensor(piece) and piece.is_floating_point():
        return piece
    ids = torch.as_tensor(piece, dtype=torch.long, device=device)
    return model.get_input_embeddings()(ids)


def _prefix_pass(model, prefix_embeds):
    """One pass over the prompt: (log-probabilities of the next token ``[V]``, per-layer keys and values)."""
    out = model(inputs_embeds=prefix_embeds.unsqueeze(0), use_cache=True, logits_to_keep=1)
    cache = output_cache(out)
    if not isinstance(cache, DynamicCache):
        raise TypeError(
            f"prefix caching needs a DynamicCache, {type(model).__name__} returned {type(cache).__name__}; "
            f"score with the naive_* functions for this model"
        )
    return out.logits[0, -1].float().log_softmax(-1), [tuple(layer) for layer in cache]


def _chunks(lengths, chunk_size):
    """Candidate indices in chunks of similar length (less padding)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[start : start + chunk_size] for start in range(0, len(order), chunk_size)]


def _pad_embeds(pieces, left, pad_vector):
    """Stack ``[L_i, d]`` pieces into ``[n, L_max, d]`` with a ``[n, L_max]`` mask, padded on one side."""
    width = max(piece.shape[0] for piece in pieces)
    embeds = pad_vector.expand(len(pieces), width, -1).clone()
    mask = torch.zeros(len(pieces), width, dtype=torch.long, device=pad_vector.device)
    for row, piece in enumerate(pieces):
        span = slice(width - piece.shape[0], width) if left else slice(0, piece.shape[0])
        embeds[row, span] = piece
        mask[row, span] = 1
    return embeds, mask


def continuation_logprobs(model, prefix_embeds, continuations, chunk_size=64):
    """Summed log-probability of each continuation (token id list) after the prompt: ``FloatTensor[C]``.

    The first token of every continuation is scored from the prompt pass itself; the rest run
    right-padded in chunks of ``chunk_size`` against the prompt's cache.
    """
    _check_prefix(prefix_embeds)
    if any(len(ids) == 0 for ids in continuations):
        raise ValueError("every continuation needs at least one token")
    device, length = prefix_embeds.device, prefix_embeds.shape[0]
    next_logprobs, layers = _prefix_pass(model, prefix_embeds)
    first = torch.tensor([ids[0] for ids in continuations], device=device)
    scores = next_logprobs[first].clone()
    for index in _chunks([len(continuations[i]) for i in range(len(continuations))], chunk_size):
        rest = [continuations[i] for i in index]
        width = max(len(ids) for ids in rest) - 1
        if width == 0:  # single-token continuations: fully scored by the prompt pass
            continue
        inputs = torch.zeros(len(rest), width, dtype=torch.long, device=device)
        targets = torch.full((len(rest), width), -100, dtype=torch.long, device=device)
        mask = torch.zeros(len(rest), length + width, dtype=torch.long, device=device)
        mask[:, :length] = 1
        for row, ids in enumerate(rest):
            ids = torch.as_tensor(ids, dtype=torch.long, device=device)
            inputs[row, : len(ids) - 1] = ids[:-1]
            targets[row, : len(ids) - 1] = ids[1:]
            mask[row, length : length + len(ids) - 1] = 1
        positions = torch.arange(length, length + width, device=device).expand(len(rest), -1)
        logits = model(
            inputs_embeds=model.get_input_embeddings()(inputs),
            attention_mask=mask,
            position_ids=positions,
            **cache_kwargs(model, expanded_cache(model, layers, len(rest))),
            use_cache=True,
        ).logits
        token_nll = F.cross_entropy(logits.float().transpose(1, 2), targets, ignore_index=-100, reduction="none")
        scores[torch.tensor(index, device=device)] -= token_nll.sum(1)
    return scores


def next_token_logits(model, prefix_embeds, suffixes, token_ids=None, chunk_size=64):
    """Next-token logits after prompt + each suffix: ``[C, len(token_ids)]`` (``[C, V]`` without ids).

    A suffix is a token id list or a float tensor ``[L, d_llm]`` of input embeddings (when it
    holds soft tokens). Suffixes are left-padded, so every row's answer position is the last one
    and only its logits are computed.
    """
    _check_prefix(prefix_embeds)
    if any(len(piece) == 0 for piece in suffixes):
        raise ValueError("every suffix needs at least one token")
    device, length = prefix_embeds.device, prefix_embeds.shape[0]
    _, layers = _prefix_pass(model, prefix_embeds)
    pad_vector = prefix_embeds.new_zeros(prefix_embeds.shape[1])
    rows = [None] * len(suffixes)
    for index in _chunks([len(suffixes[i]) for i in range(len(suffixes))], chunk_size):
        pieces = [_embed_piece(model, suffixes[i], device) for i in index]
        embeds, suffix_mask = _pad_embeds(pieces, left=True, pad_vector=pad_vector)
        mask = torch.cat([suffix_mask.new_ones(len(index), length), suffix_mask], dim=1)
        positions = length + (suffix_mask.cumsum(1) - 1).clamp(min=0)
        logits = model(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=positions,
            **cache_kwargs(model, expanded_cache(model, layers, len(index))),
            use_cache=True,
            logits_to_keep=1,
        ).logits[:, -1]
        if token_ids is not None:
            logits = logits[:, list(token_ids)]
        for i, row in zip(index, logits):
            rows[i] = row
    return torch.stack(rows).float()


# ---- training heads and ranking helpers -----------------------------------------------------------


def last_token_logits(model, inputs_embeds, attention_mask):
    """Logits of the token after each left-padded prompt: ``[batch, V]``, computed at that position only."""
    if not bool(attention_mask[:, -1].all()):
        raise ValueError("last_token_logits needs left-padded prompts (every row ends at the last position)")
    positions = (attention_mask.cumsum(1) - 1).clamp(min=0)
    out = model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=positions,
                use_cache=False, logits_to_keep=1)
    return out.logits[:, -1].float()


def label_loss(model, inputs_embeds, attention_mask, labels):
    """Causal-LM cross-entropy, averaged over the tokens whose label is not -100 (right-padded rows).

    Logits are computed only at the positions that predict a labelled token.
    """
    hidden = model.get_decoder()(inputs_embeds=inputs_embeds, attention_mask=attention_mask, use_cache=False)
    targets = labels[:, 1:]
    scored = targets != -100
    logits = model.get_output_embeddings()(hidden.last_hidden_state[:, :-1][scored]).float()
    return F.cross_entropy(logits, targets[scored])


def shuffled_candidates(target, negatives):
    """Each row's target among its negatives (``[B]``, ``[B, n]``), in a random order: ``[B, 1 + n]`` ids."""
    candidates = torch.cat([target.unsqueeze(1), negatives], 1)
    order = torch.argsort(torch.rand(candidates.shape, device=candidates.device), dim=1)
    return torch.gather(candidates, 1, order)


def answer_labels(prompts, answers, width, device):
    """Labels of right-padded ``prompt + answer`` rows: the answer's ids, -100 on prompt and padding."""
    labels = torch.full((len(prompts), width), -100, dtype=torch.long, device=device)
    for row, (prompt, answer) in enumerate(zip(prompts, answers)):
        labels[row, len(prompt) : len(prompt) + len(answer)] = torch.tensor(answer, device=device)
    return labels


def seeded_generator(seed, key):
    """A CPU generator for one (seed, key) pair, e.g. one user: the same draw in every evaluation."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(key))


def break_ties(scores, generator):
    """``scores`` with exact ties broken at random; distinct scores keep their order.

    Each score moves up by less than half the smallest gap between distinct scores, so only
    equal scores (e.g. two items with the same title) are reordered, and row order (the positive
    comes first in RecBole's sampled evaluation) never decides.
    """
    values = scores.detach().float()
    distinct = torch.unique(values)
    gap = (distinct[1:] - distinct[:-1]).min() if len(distinct) > 1 else values.abs().max().clamp(min=1.0)
    jitter = torch.rand(len(values), generator=generator).to(values.device)
    return values + jitter * (gap / 2)


# ---- references: one full prompt per candidate ---------------------------------------------------
# As economical as a full prompt per candidate allows (batched, logits only where they are read),
# so that the measured speed-up is that of the shared prefix alone.


def _full_prompts(model, prefix_embeds, pieces):
    """Prompt + piece for every candidate, left-padded: ``[n, L, d_llm]`` and its mask."""
    embeds = [torch.cat([prefix_embeds, _embed_piece(model, piece, prefix_embeds.device)]) for piece in pieces]
    return _pad_embeds(embeds, left=True, pad_vector=prefix_embeds.new_zeros(prefix_embeds.shape[1]))


def naive_continuation_logprobs(model, prefix_embeds, continuations, chunk_size=64):
    """:func:`continuation_logprobs` computed with the whole prompt + continuation per candidate."""
    _check_prefix(prefix_embeds)
    scores = []
    for start in range(0, len(continuations), chunk_size):
        chunk = continuations[start : start + chunk_size]
        embeds, mask = _full_prompts(model, prefix_embeds, chunk)
        keep = max(len(ids) for ids in chunk) + 1  # the prompt's last position and the continuations'
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        logits = model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False,
                       logits_to_keep=keep).logits.float()
        for row, ids in enumerate(chunk):
            logprobs = logits[row, keep - len(ids) - 1 : keep - 1].log_softmax(-1)
            scores.append(logprobs.gather(1, torch.as_tensor(ids, device=logits.device).unsqueeze(1)).sum())
    return torch.stack(scores)


def naive_next_token_logits(model, prefix_embeds, suffixes, token_ids=None, chunk_size=64):
    """:func:`next_token_logits` computed with the whole prompt + suffix per candidate."""
    _check_prefix(prefix_embeds)
    rows = []
    for start in range(0, len(suffixes), chunk_size):
        embeds, mask = _full_prompts(model, prefix_embeds, suffixes[start : start + chunk_size])
        logits = last_token_logits(model, embeds, mask)
        rows.append(logits[:, list(token_ids)] if token_ids is not None else logits)
    return torch.cat(rows)
