"""LLMSeqPrompt: LoRA fine-tuning to write the next title, and the mapping of text to catalogue items."""

import pytest
import torch
from recbole.utils import init_seed

from recbole_llmsrec.config import Config
from recbole_llmsrec.quick_start import _build


@pytest.fixture
def prompt_config(tiny_config_dict, tiny_encoder_path):
    keys = ("dataset", "data_path", "item_text_fields", "load_col", "llm_path", "checkpoint_dir",
            "MAX_ITEM_LIST_LENGTH", "show_progress", "state")
    return {**{k: tiny_config_dict[k] for k in keys}, "text_encoder_path": tiny_encoder_path,
            "lora_target_modules": ["q_proj", "v_proj"], "llmseqprompt_num_samples": 3,
            "llmseqprompt_max_new_tokens": 6, "prompt_history_len": 5, "learning_rate": 0.01,
            "train_batch_size": 16, "eval_batch_size": 6000, "epochs": 1}


def build(config_dict, **overrides):
    config = Config(model="LLMSeqPrompt", config_dict={**config_dict, **overrides})
    init_seed(config["seed"], config["reproducibility"])
    return config, _build(config)


def test_mapping_returns_the_catalogue_item_of_an_exact_title(prompt_config):
    _, (dataset, *_, model, _) = build(prompt_config)
    item = dataset.token2id("item_id", "12")
    scores = model.map_to_catalogue([["Film 12"], ["", "Film 12"], [""]])
    assert scores.shape == (3, dataset.item_num)
    assert int(scores[0].argmax()) == item and int(scores[1].argmax()) == item
    assert torch.isclose(scores[0, item], torch.tensor(1.0), atol=1e-5)
    assert torch.all(scores[2, 1:] == 0)  # an empty generation matches nothing


def test_lora_trains_the_title_and_base_weights_stay(prompt_config):
    config, (dataset, train_data, valid_data, test_data, model, trainer) = build(prompt_config)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    base_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    batch = next(iter(train_data))
    model.train()
    first = model.calculate_loss(batch).item()
    for _ in range(15):
        trainer.optimizer.zero_grad()
        model.calculate_loss(batch).backward()
        trainer.optimizer.step()
    assert model.calculate_loss(batch).item() < first
    assert all(torch.equal(p, base_before[n]) for n, p in model.named_parameters() if not p.requires_grad)
    assert any(not torch.equal(p, lora_before[n]) for n, p in model.named_parameters() if p.requires_grad)


def test_generation_scores_every_item_and_evaluates(prompt_config):
    config, (dataset, train_data, valid_data, test_data, model, trainer) = build(prompt_config)
    model.eval()
    titles = model.generate_titles([[1, 2, 3], [4]])
    assert len(titles) == 2 and all(len(t) == 3 and all(isinstance(s, str) for s in t) for t in titles)
    batch = next(iter(test_data))[0]
    with torch.no_grad():
        full = model.full_sort_predict(batch[[0]])
    seen = batch["item_id_list"][0][: batch["item_length"][0]]
    assert full.shape == (1, dataset.item_num) and torch.isinf(full[0, seen]).all()
    trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    result = trainer.evaluate(test_data, load_best_model=True)
    assert 0.0 <= result["ndcg@10"] <= result["hit@10"] <= 1.0


def test_shared_prefill_gives_the_logits_and_samples_of_generate_alone(prompt_config):
    """Reading each prompt once for all its samples changes the cost, not the logits or the samples."""
    _, (dataset, *_, model, _) = build(prompt_config, llmseqprompt_num_samples=4, llmseqprompt_temperature=1.0,
                                       llmseqprompt_max_new_tokens=8)
    model.eval()
    prompts = [model.prompt_ids(h) for h in ([1, 2, 3, 4, 5], [6], [7, 8])]  # different lengths: left padding
    calls = []  # [rows, tokens] of every pass through the decoder
    model.llm.get_decoder().register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(tuple(
            (kwargs["input_ids"] if kwargs.get("input_ids") is not None else kwargs["inputs_embeds"]).shape[:2])),
        with_kwargs=True)
    runs = {}
    for shared in (True, False):
        model.shared_prefill = shared
        calls.clear()
        torch.manual_seed(7)
        with torch.no_grad():
            out = model._generate(prompts, 4, output_logits=True, return_dict_in_generate=True)
        runs[shared] = (out.sequences, torch.stack(out.logits), calls[0])
    (seq_shared, logits_shared, first_shared), (seq_alone, logits_alone, first_alone) = runs[True], runs[False]
    assert torch.equal(seq_shared, seq_alone)
    assert len({tuple(row) for row in seq_shared.tolist()}) > 3  # real sampling, not one greedy title
    finite = torch.isfinite(logits_alone)
    assert torch.equal(finite, torch.isfinite(logits_shared))
    assert torch.allclose(logits_shared[finite], logits_alone[finite], atol=1e-4)
    width = max(map(len, prompts))
    assert first_shared == (3, width - 1)  # one row per user reads the prompt
    assert first_alone == (12, width)  # generate alone: one row per sample
    titles = model.generate_titles([[1, 2, 3, 4, 5], [6]])
    assert len(titles) == 2 and all(len(t) == 4 for t in titles)


def test_stopping_at_a_newline_keeps_the_titles(prompt_config):
    """Generation ends a title at its line; the text after a newline was cut anyway."""
    _, (dataset, *_, model, _) = build(prompt_config, llmseqprompt_num_samples=4, llmseqprompt_temperature=1.5,
                                       llmseqprompt_max_new_tokens=12)
    model.eval()
    assert model.stop_ids == [model.eos_id] + model.newline and len(model.newline) == 1
    titles = {}
    for stops in ([model.eos_id], model.stop_ids):
        model.stop_ids = stops
        torch.manual_seed(3)
        titles[len(stops)] = model.generate_titles([[1, 2, 3], [4, 5], [6]])
    assert titles[1] == titles[2]


def test_row_sampler_draws_from_the_tempered_nucleus():
    """One generator per row, the token kept for greedy decoding: a draw from softmax(logits / T), top-p cut."""
    from recbole_llmsrec.model.sequential_recommender.llmseqprompt import RowSampler

    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, -float("inf")])
    rows = 6000
    for temperature, top_p in ((1.0, 1.0), (0.5, 1.0), (1.0, 0.7)):
        sampler = RowSampler(range(rows), temperature, top_p, "cpu")
        draws = sampler(None, logits.repeat(rows, 1)).argmax(-1)
        expected = (logits / temperature).softmax(-1)
        if top_p < 1.0:  # 0.665 + 0.245 reach 0.7: the two most likely tokens only
            expected = torch.tensor([expected[0], expected[1], 0, 0, 0]) / (expected[0] + expected[1])
        frequency = torch.bincount(draws, minlength=5).float() / rows
        assert torch.allclose(frequency, expected, atol=0.02), (temperature, top_p, frequency, expected)
        assert frequency[4] == 0
    again = RowSampler(range(3), 1.0, 1.0, "cpu")(None, logits.repeat(3, 1))
    assert torch.equal(again, RowSampler(range(3), 1.0, 1.0, "cpu")(None, logits.repeat(3, 1)))


def test_a_users_titles_do_not_depend_on_the_batch_or_what_ran_before(prompt_config):
    _, (dataset, *_, model, _) = build(prompt_config, llmseqprompt_num_samples=4, llmseqprompt_temperature=1.0,
                                       llmseqprompt_max_new_tokens=8)
    model.eval()
    alone = model.generate_titles([[1, 2, 3]], users=[5])[0]
    torch.manual_seed(123)  # the global stream plays no part
    batched = model.generate_titles([[7, 8], [1, 2, 3], [4]], users=[9, 5, 2])
    assert batched[1] == alone
    assert len(set(alone)) > 1  # real sampling, not one greedy title
    assert model.generate_titles([[1, 2, 3]], users=[6])[0] != alone  # another user, another stream
    model.sample_seed += 1
    assert model.generate_titles([[1, 2, 3]], users=[5])[0] != alone
