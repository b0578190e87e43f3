"""The frozen LLM's cheaper paths give the numbers of the plain path: the per-prompt head cache
(exact up to 1e-4) and the bfloat16 compute path (within a stated tolerance)."""

import pytest
import torch
from recbole.utils import init_seed

from recbole_llmsrec.config import Config
from recbole_llmsrec.llm.backbone import resolve_compute_dtype
from recbole_llmsrec.llm.cache import PromptHeadCache, head_length
from recbole_llmsrec.quick_start import _build


def build(config_dict, model="LLMSRec", **overrides):
    config = Config(model=model, config_dict={**config_dict, **overrides})
    init_seed(config["seed"], config["reproducibility"])
    return _build(config)


def first_batch(train_data):
    init_seed(2020, True)
    return next(iter(train_data))


def loss_and_grads(model, batch):
    """The summed loss on ``batch`` (fixed negatives) and the gradient of every trained parameter."""
    model.train()
    model.zero_grad()
    torch.manual_seed(0)
    loss = model.calculate_loss(batch)
    loss = sum(loss) if isinstance(loss, tuple) else loss
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def eval_vectors(model, test_data):
    model.eval()
    model.clear_cache()
    batch = next(iter(test_data))[0]
    with torch.no_grad():
        return model.all_item_vectors().clone(), model.user_vectors(batch).clone()


def test_head_length_stops_at_the_first_soft_token():
    assert head_length([1, 2, 9, 3, 8], {8, 9}) == 2
    assert head_length([1, 2, 3], {8}) == 3


def test_head_cache_equals_the_whole_prompt(tiny_config_dict):
    _, train_data, _, test_data, model, _ = build(tiny_config_dict, prompt_show_dates=True)
    batch = first_batch(train_data)
    assert model.llm.head_cache is not None and len(model.llm.head_cache) == 0

    loss_cached, grads_cached = loss_and_grads(model, batch)
    assert len(model.llm.head_cache) > 0  # item titles and user openings were kept
    # a second step reads the kept heads (no new ones for the same batch) and gives the same numbers
    kept = len(model.llm.head_cache)
    loss_again, grads_again = loss_and_grads(model, batch)
    assert len(model.llm.head_cache) == kept and loss_again == pytest.approx(loss_cached, abs=1e-6)
    items_cached, users_cached = eval_vectors(model, test_data)

    model.llm.head_cache = None  # the whole prompts, as before the cache
    loss_plain, grads_plain = loss_and_grads(model, batch)
    items_plain, users_plain = eval_vectors(model, test_data)

    assert loss_cached == pytest.approx(loss_plain, abs=1e-4)
    assert set(grads_cached) == set(grads_plain) and {"item_proj.0.weight", "user_out_token"} <= set(grads_plain)
    for name in grads_plain:
        assert torch.allclose(grads_cached[name], grads_plain[name], atol=1e-4, rtol=1e-4), name
    assert torch.allclose(items_cached, items_plain, atol=1e-4)
    assert torch.allclose(users_cached, users_plain, atol=1e-4)


def test_a_full_head_cache_recomputes_and_stays_exact(tiny_config_dict):
    _, train_data, _, _, model, _ = build(tiny_config_dict)
    batch = first_batch(train_data)
    model.llm.head_cache = PromptHeadCache(max_mb=0.001)  # room for no head
    loss_bounded, grads_bounded = loss_and_grads(model, batch)
    assert len(model.llm.head_cache) == 0 and model.llm.head_cache.bytes == 0
    model.llm.head_cache = None
    loss_plain, grads_plain = loss_and_grads(model, batch)
    assert loss_bounded == pytest.approx(loss_plain, abs=1e-4)
    for name in grads_plain:
        assert torch.allclose(grads_bounded[name], grads_plain[name], atol=1e-4, rtol=1e-4), name


def test_lora_models_never_use_the_head_cache(tiny_config_dict):
    config = {**tiny_config_dict, "lora_r": 2, "lora_alpha": 4, "lora_dropout": 0.0,
              "lora_target_modules": ["q_proj", "v_proj"], "prompt_show_dates": False}
    _, train_data, _, _, model, _ = build(config, model="TALLRec")
    assert model.llm.head_cache is not None and not model.llm.frozen
    before, _ = loss_and_grads(model, first_batch(train_data))
    assert len(model.llm.head_cache) == 0  # adapters change the states: nothing may be kept
    with torch.no_grad():  # and after the adapters move, the loss follows them (nothing stale)
        for name, param in model.llm.model.named_parameters():
            if "lora_B" in name:
                param.add_(0.5)
    after, _ = loss_and_grads(model, first_batch(train_data))
    assert after != pytest.approx(before, abs=1e-6)


def test_bfloat16_compute_agrees_with_float32(tiny_config_dict):
    """Stated tolerance, on a tiny random Llama (bfloat16 keeps 8 bits of mantissa): the loss within
    2 %, the whole gradient at cosine >= 0.93 with float32 (0.95 measured; the [UserOut] vector, read
    through every layer, dominates it) and each weight matrix's or token vector's
    at >= 0.9, the evaluation vectors at cosine >= 0.99."""
    _, train_data, _, test_data, model, _ = build(tiny_config_dict, llm_compute_dtype="float32")
    assert model.llm.compute_dtype is None
    batch = first_batch(train_data)
    loss32, grads32 = loss_and_grads(model, batch)
    items32, users32 = eval_vectors(model, test_data)

    model.llm.compute_dtype = torch.bfloat16
    model.llm.head_cache.clear()  # heads computed in float32 would mix precisions
    loss16, grads16 = loss_and_grads(model, batch)
    items16, users16 = eval_vectors(model, test_data)
    # the trained parameters, their gradients and the loss stay float32
    assert all(g.dtype == torch.float32 for g in grads16.values()) and items16.dtype == torch.float32

    assert loss16 == pytest.approx(loss32, rel=0.02)
    cosine = torch.nn.functional.cosine_similarity
    whole16 = torch.cat([grads16[name].flatten() for name in sorted(grads32)])
    whole32 = torch.cat([grads32[name].flatten() for name in sorted(grads32)])
    assert cosine(whole16, whole32, dim=0) >= 0.93
    for name in grads32:  # each weight matrix and token vector (a bias's gradient can be ~0, all rounding)
        if grads32[name].dim() > 1 or name.endswith("_token"):
            assert cosine(grads16[name].flatten(), grads32[name].flatten(), dim=0) >= 0.9, name
    assert cosine(items16.flatten(), items32.flatten(), dim=0) >= 0.99
    assert cosine(users16.flatten(), users32.flatten(), dim=0) >= 0.99
    assert not torch.equal(items16, items32)  # bfloat16 really ran


def test_compute_dtype_setting():
    assert resolve_compute_dtype("float32", "cpu", torch.float32) is None
    assert resolve_compute_dtype("bfloat16", "cpu", torch.bfloat16) is None  # weights already bfloat16
    assert resolve_compute_dtype("float16", "cpu", torch.float32) == torch.float16
    auto = resolve_compute_dtype("auto", "cpu", torch.float32)
    fast = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert auto == (torch.bfloat16 if fast else None)
    with pytest.raises(ValueError, match="llm_compute_dtype"):
        resolve_compute_dtype("int8", "cpu", torch.float32)
