"""Key/value caches of a frozen LLM: the pieces every cached path here is built from.

* :func:`cache_kwargs` / :func:`output_cache` pass and read a cache under the name the installed
  transformers uses; :func:`expanded_cache` repeats one prompt's keys and values over rows.
* :class:`PromptHeadCache` keeps, per distinct *head* (every token of a prompt before its first
  soft token), the keys and values the frozen LLM computes for it. The head is plain text (an item
  prompt's opening and title, a user prompt's opening up to its first title), so its states never
  change while the LLM stays frozen: they are computed once per run and each later call runs only
  the prompt's *tail*, from the first soft token on. Scores and gradients are those of the whole
  prompt (the soft tokens, whose gradients are wanted, are all in the tail).

Nothing here imports the rest of the plugin, so the backbone and the scoring code both build on it.
"""

import functools
import inspect
import logging

import torch
from transformers import DynamicCache

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=None)
def _cache_argument(decoder_class):
    return "cache" if "cache" in inspect.signature(decoder_class.forward).parameters else "past_key_values"


def cache_kwargs(model, cache):
    """``{name: cache}`` for a forward or ``generate`` call, under the name this transformers uses.

    transformers 5 renamed ``past_key_values`` to ``cache`` (the old name warns, and goes in 5.40);
    4.x knows only ``past_key_values``. Looked up once per decoder class, not per call.
    """
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    return {_cache_argument(type(decoder)): cache}


def output_cache(output):
    """The key/value cache of a model output, under either transformers name."""
    return output["cache"] if "cache" in output else output["past_key_values"]


def expanded_cache(model, layers, n):
    """A fresh cache holding one prompt's keys and values for ``n`` rows (views, no copy).

    A new cache per call, because running tokens against a cache appends their keys to it.
    """
    data = [(keys.expand(n, *keys.shape[1:]), values.expand(n, *values.shape[1:]), *rest)
            for keys, values, *rest in layers]
    return DynamicCache(data, config=model.config)


def head_length(prompt, soft_ids):
    """How many opening tokens of ``prompt`` come before its first soft token (all: none in it)."""
    for position, token in enumerate(prompt):
        if token in soft_ids:
            return position
    return len(prompt)


class PromptHeadCache:
    """Keys and values of prompt heads, stored per head token sequence, up to ``max_mb`` megabytes.

    A head's entry is one tensor ``[layers, 2, kv_heads, length, head_dim]`` in the LLM's cache
    dtype. Entries are never evicted: once the bound is reached, further heads are computed for the
    call that needs them and not kept (a warning says so once); ``max_mb`` None means no bound.
    """

    def __init__(self, max_mb=None):
        self.max_bytes = None if max_mb is None else int(max_mb * 2**20)
        self.entries = {}
        self.bytes = 0
        self._warned_full = False

    def __len__(self):
        return len(self.entries)

    def clear(self):
        self.entries, self.bytes = {}, 0

    def heads(self, decoder, embed, heads):
        """The entry of each head (a tuple of token ids; None for an empty one), computing the
        missing ones.

        Each head runs alone: its states then do not depend on which other heads happened to be
        missing in the same call (a batched product's rounding depends on the batch), so a run
        resumed with an empty cache computes exactly what the uninterrupted run had kept.
        """
        missing = list(dict.fromkeys(head for head in heads if head and head not in self.entries))
        fresh = {}
        for head in missing:
            ids = torch.tensor([head], dtype=torch.long, device=embed.weight.device)
            with torch.no_grad():
                out = decoder(inputs_embeds=embed(ids), use_cache=True)
            layers = [tuple(layer)[:2] for layer in output_cache(out)]
            fresh[head] = torch.stack([torch.stack([keys[0], values[0]]) for keys, values in layers])  # [L, 2, h, p, d]
        for head, entry in fresh.items():
            size = entry.numel() * entry.element_size()
            if self.max_bytes is not None and self.bytes + size > self.max_bytes:
                if not self._warned_full:
                    logger.warning(
                        f"the LLM's prompt-head cache is full ({self.bytes / 2**20:.0f} MB, {len(self.entries)} "
                        f"heads; llm_head_cache_mb); further heads are recomputed when needed"
                    )
                    self._warned_full = True
                continue
            self.entries[head] = entry
            self.bytes += size
        return [self.entries.get(head, fresh.get(head)) if head else None for head in heads]


def run_tails(decoder, embeds, tail_mask, head_entries, config):
    """Decoder hidden states ``[n, T, d]`` of right-padded tails (``embeds`` ``[n, T, d]``,
    ``tail_mask`` ``[n, T]``), each after its head's cached keys and values.

    Heads of different lengths are left-padded to the longest (padding masked out); each tail's
    positions continue after its own head, so every row computes what its whole prompt would.
    """
    rows, width = tail_mask.shape
    lengths = [0 if entry is None else entry.shape[3] for entry in head_entries]
    past = max(lengths)
    device = embeds.device
    mask = torch.zeros(rows, past + width, dtype=tail_mask.dtype, device=device)
    mask[:, past:] = tail_mask
    for row, length in enumerate(lengths):
        mask[row, past - length : past] = 1
    positions = torch.tensor(lengths, device=device).unsqueeze(1) + torch.arange(width, device=device)
    if past == 0:
        return decoder(inputs_embeds=embeds, attention_mask=tail_mask, position_ids=positions).last_hidden_state
    sample = next(entry for entry in head_entries if entry is not None)
    n_layers, _, kv_heads, _, head_dim = sample.shape
    kv = sample.new_zeros(n_layers, 2, rows, kv_heads, past, head_dim)
    for row, (entry, length) in enumerate(zip(head_entries, lengths)):
        if length:
            kv[:, :, row, :, past - length :] = entry
    cache = DynamicCache([(kv[layer, 0], kv[layer, 1]) for layer in range(n_layers)], config=config)
    return decoder(
        inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
        **cache_kwargs(decoder, cache), use_cache=True,
    ).last_hidden_state
