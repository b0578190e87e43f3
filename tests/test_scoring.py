"""Prefix-cached candidate scoring equals one full prompt per candidate (tiny Llama, LoRA, soft tokens)."""

import warnings

import pytest
import torch
from peft import LoraConfig, get_peft_model

from recbole_llmsrec.llm.backbone import load_causal_lm
from recbole_llmsrec.llm.scoring import (
    continuation_logprobs,
    naive_continuation_logprobs,
    naive_next_token_logits,
    next_token_logits,
)

TOL = 1e-4


@pytest.fixture(scope="module")
def llm(tiny_llm_path):
    model, tokenizer = load_causal_lm(tiny_llm_path)
    return model, tokenizer


@pytest.fixture(scope="module")
def lora_llm(tiny_llm_path):
    model, _ = load_causal_lm(tiny_llm_path)
    with warnings.catch_warnings():  # peft's own use of a deprecated transformers alias
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(3)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero; make the adapters change the outputs
            param.data.normal_(0, 0.5)
    peft_model.eval()
    return peft_model


def prompt(model, tokenizer, text, soft=0):
    ids = tokenizer(text).input_ids
    embeds = model.get_input_embeddings()(torch.tensor(ids))
    if soft:  # soft tokens in the middle of the prompt, as projected item embeddings would be
        torch.manual_seed(5)
        middle = len(ids) // 2
        embeds = torch.cat([embeds[:middle], torch.randn(soft, embeds.shape[1]) * 0.1, embeds[middle:]])
    return embeds.detach()


def continuations(tokenizer):
    titles = ['"Film 1"', '"Film 12" and more', "x", '"Film 3", a much longer title than the others by far']
    return [tokenizer(t, add_special_tokens=False).input_ids for t in titles]


@torch.no_grad()
def test_continuation_logprobs_match_the_language_model_loss(llm):
    """The reference itself: summed log-probabilities equal the LM loss on the continuation tokens."""
    model, tokenizer = llm
    prefix_ids = tokenizer("A user watched Film 2, Film 5.").input_ids
    conts = continuations(tokenizer)
    naive = naive_continuation_logprobs(model, model.get_input_embeddings()(torch.tensor(prefix_ids)), conts)
    for score, cont in zip(naive, conts):
        ids = torch.tensor([prefix_ids + cont])
        labels = ids.clone()
        labels[0, : len(prefix_ids)] = -100
        loss = model(input_ids=ids, labels=labels).loss
        assert torch.isclose(score, -loss * len(cont), atol=TOL)


@torch.no_grad()
def test_naive_next_token_logits_match_one_unpadded_pass_per_suffix(llm):
    """The reference itself: left-padded batches give each suffix's last logits as a lone pass does."""
    model, tokenizer = llm
    prefix_ids = tokenizer("Answer Yes or No. The user liked Film 2.").input_ids
    suffixes = [tokenizer(t, add_special_tokens=False).input_ids for t in (" Film 1?", " Film 12 and more?", " x")]
    naive = naive_next_token_logits(model, model.get_input_embeddings()(torch.tensor(prefix_ids)), suffixes)
    for row, suffix in zip(naive, suffixes):
        alone = model(input_ids=torch.tensor([prefix_ids + suffix])).logits[0, -1]
        assert torch.allclose(row, alone, atol=TOL)


@pytest.mark.parametrize("chunk_size", [1, 3, 64])
@pytest.mark.parametrize("soft", [0, 3])
@torch.no_grad()
def test_cached_continuations_equal_naive(llm, chunk_size, soft):
    model, tokenizer = llm
    prefix = prompt(model, tokenizer, "A user watched Film 2, Film 5. Next:", soft=soft)
    conts = continuations(tokenizer)
    assert len({len(c) for c in conts}) == len(conts) and min(map(len, conts)) == 1
    cached = continuation_logprobs(model, prefix, conts, chunk_size=chunk_size)
    naive = naive_continuation_logprobs(model, prefix, conts)
    assert cached.shape == (len(conts),)
    assert torch.allclose(cached, naive, atol=TOL), (cached, naive)
    assert (cached < 0).all()


@torch.no_grad()
def test_cached_continuations_equal_naive_with_lora(lora_llm, llm):
    base, tokenizer = llm
    prefix = prompt(lora_llm, tokenizer, "A user watched Film 2, Film 5. Next:", soft=2)
    conts = continuations(tokenizer)
    cached = continuation_logprobs(lora_llm, prefix, conts, chunk_size=2)
    assert torch.allclose(cached, naive_continuation_logprobs(lora_llm, prefix, conts), atol=TOL)
    # the adapters are active: the base model alone scores differently
    with lora_llm.disable_adapter():
        assert not torch.allclose(cached, continuation_logprobs(lora_llm, prefix, conts), atol=1e-3)


@pytest.mark.parametrize("chunk_size", [2, 64])
@torch.no_grad()
def test_cached_next_token_logits_equal_naive(llm, lora_llm, chunk_size):
    model, tokenizer = llm
    yes_no = [tokenizer(" Yes", add_special_tokens=False).input_ids[0], tokenizer(" No", add_special_tokens=False).input_ids[0]]
    suffixes = [tokenizer(f' Will the user like "{t}"? Answer:', add_special_tokens=False).input_ids
                for t in ("Film 1", "Film 12", "Film 140 with a longer title")]
    # a suffix given as embeddings with a soft token in it (CoLLM's item token)
    with_soft = model.get_input_embeddings()(torch.tensor(suffixes[0]))
    with_soft = torch.cat([with_soft[:3], torch.randn(1, with_soft.shape[1]) * 0.1, with_soft[3:]])
    suffixes.append(with_soft)
    for lm in (model, lora_llm):
        prefix = prompt(lm, tokenizer, "Instruction: answer Yes or No. The user liked Film 2, Film 5.", soft=2)
        cached = next_token_logits(lm, prefix, suffixes, token_ids=yes_no, chunk_size=chunk_size)
        naive = naive_next_token_logits(lm, prefix, suffixes, token_ids=yes_no)
        assert cached.shape == (len(suffixes), 2)
        assert torch.allclose(cached, naive, atol=TOL), (cached, naive)
        full = next_token_logits(lm, prefix, suffixes, chunk_size=chunk_size)
        assert full.shape == (len(suffixes), len(tokenizer)) and torch.allclose(full[:, yes_no], cached, atol=TOL)


@torch.no_grad()
def test_cache_of_one_candidate_does_not_leak_into_the_next(llm):
    """Scoring a candidate alone or among others gives the same number (each chunk gets a fresh cache)."""
    model, tokenizer = llm
    prefix = prompt(model, tokenizer, "A user watched Film 2.")
    conts = continuations(tokenizer)
    together = continuation_logprobs(model, prefix, conts, chunk_size=2)
    alone = torch.stack([continuation_logprobs(model, prefix, [c])[0] for c in conts])
    assert torch.allclose(together, alone, atol=TOL)


def test_bad_inputs_are_refused(llm):
    model, tokenizer = llm
    prefix = prompt(model, tokenizer, "A user")
    with pytest.raises(ValueError, match="at least one token"):
        continuation_logprobs(model, prefix, [[5], []])
    with pytest.raises(ValueError, match=r"\[P, d_llm\]"):
        next_token_logits(model, prefix.unsqueeze(0), [[5]])
