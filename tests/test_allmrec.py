"""A-LLMRec on the tiny dataset with a tiny Llama and a tiny text encoder: both stages, both scoring forms."""

import os

import pytest
import torch
from recbole.utils import init_seed

from recbole_llmsrec.compat import load_recbole_checkpoint
from recbole_llmsrec.config import Config
from recbole_llmsrec.leaderboard import training_record
from recbole_llmsrec.quick_start import _build, run_recbole_llmsrec

STAGE1 = ("item_autoencoder", "text_autoencoder")


def uni(n):
    return {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": {"valid": f"uni{n}", "test": f"uni{n}"}}


@pytest.fixture
def allmrec_config(tiny_config_dict, tiny_encoder_path):
    return {**tiny_config_dict, "text_encoder_path": tiny_encoder_path, "allmrec_stage1_epochs": 8,
            "allmrec_stage1_learning_rate": 0.01, "allmrec_latent_dim": 8, "epochs": 3, "prompt_show_dates": False}


def build(config_dict, **overrides):
    config = Config(model="ALLMRec", config_dict={**config_dict, **overrides})
    init_seed(config["seed"], config["reproducibility"])
    return _build(config)


def params(model, prefixes):
    return {name: p.detach().clone() for name, p in model.named_parameters() if name.startswith(prefixes)}


def test_both_stages_train_and_stage2_starts_from_stage1(allmrec_config):
    _, train_data, valid_data, test_data, model, trainer = build(allmrec_config)
    llm_before = model.llm.model.get_input_embeddings().weight.clone()
    trainer.fit(train_data, valid_data, saved=True)

    for stage in ("stage1", "stage2"):
        losses = [trainer.stage_train_loss[stage][e] for e in sorted(trainer.stage_train_loss[stage])]
        assert losses[-1] < losses[0], (stage, losses)
    assert torch.equal(model.llm.model.get_input_embeddings().weight, llm_before)

    # one checkpoint per stage: stage 1 holds the autoencoders, stage 2 everything trained
    stage1_file = trainer.saved_model_file.replace("-stage2.pth", "-stage1.pth")
    stage1 = load_recbole_checkpoint(stage1_file)["state_dict"]
    stage2 = load_recbole_checkpoint(trainer.saved_model_file)["state_dict"]
    assert {name.split(".")[0] for name in stage1} == set(STAGE1)
    assert {name.split(".")[0] for name in stage2} == set(STAGE1) | {
        "user_proj", "item_proj", "user_head", "item_head", "user_out_token", "item_out_token"}
    assert not any(name.startswith(("llm.", "teacher.")) for name in stage2)
    # stage 2 kept stage 1's autoencoders frozen: the final model carries them unchanged
    for name, value in stage1.items():
        assert torch.equal(stage2[name], value), name

    result = trainer.evaluate(test_data, load_best_model=True)
    assert 0.0 <= result["ndcg@10"] <= result["hit@10"] <= 1.0
    # the leaderboard's record of the rule: per stage, each with its own epochs and early stopping
    rule = training_record(trainer, trainer.config, trainer.valid_history)
    assert rule["epochs_max"] == {"stage1": 8, "stage2": 3} and rule["learning_rate"]["stage1"] == 0.01
    assert rule["validations"] == {"stage1": 8, "stage2": 3} and rule["epochs_run"] == {"stage1": 8, "stage2": 3}
    # stopping_step 10: neither stage can stop early within its epochs
    assert rule["stopped_by"] == {"stage1": "max epochs", "stage2": "max epochs"} and not rule["converged"]

    # resume from the saved stage 1: it is loaded, not trained again
    _, train_data, valid_data, _, model2, trainer2 = build(allmrec_config, allmrec_stage1_checkpoint=stage1_file, epochs=1)
    trainer2.fit(train_data, valid_data, saved=True)
    assert "stage1" not in trainer2.stage_train_loss and "stage2" in trainer2.stage_train_loss
    rule = training_record(trainer2, trainer2.config, trainer2.valid_history)
    assert rule["stopped_by"] == {"stage1": "loaded from checkpoint", "stage2": "max epochs"}  # 1 epoch: in patience
    assert rule["validations"] == {"stage1": 0, "stage2": 1} and not rule["converged"]
    for name, value in params(model2, STAGE1).items():
        assert torch.equal(value, stage1[name]), name

    # a checkpoint of the wrong stage is refused with the fix named
    with pytest.raises(ValueError, match="trained up to stage1"):
        _, train_data, valid_data, _, _, trainer3 = build(allmrec_config, allmrec_stage1_checkpoint=trainer.saved_model_file)
        trainer3.fit(train_data, valid_data, saved=True)


def test_stage1_aligns_item_and_text_latents(allmrec_config):
    _, train_data, valid_data, _, model, trainer = build(allmrec_config)
    model.stage2_settings["epochs"] = 0  # stage 1 alone
    items = torch.arange(1, model.n_items)

    def matching():
        with torch.no_grad():
            return torch.nn.functional.mse_loss(
                model.joint_item_embedding(items), model.text_autoencoder.encoder(model.item_text_vectors[items])).item()

    before = matching()
    trainer.fit(train_data, valid_data, saved=False)
    assert matching() < before


def test_retrieval_scores_one_per_candidate(allmrec_config):
    dataset, train_data, _, test_data, model, _ = build(allmrec_config)
    model.eval()
    batch = next(iter(test_data))[0]
    with torch.no_grad():
        picked = model.predict(batch)
        full = model.full_sort_predict(batch)
    assert picked.shape == (len(batch),) and torch.isfinite(picked).all()
    assert full.shape == (len(batch), dataset.item_num)
    assert torch.allclose(picked, full[torch.arange(len(batch)), batch["item_id"]], atol=1e-5)


def test_title_likelihood_training_and_scoring(allmrec_config):
    config = {**allmrec_config, "scoring": "title_likelihood", "allmrec_num_candidates": 5, "learning_rate": 0.01,
              "allmrec_stage1_epochs": 1, "epochs": 4, "eval_args": uni(9), "eval_batch_size": 50}
    _, train_data, valid_data, test_data, model, trainer = build(config)
    assert set(model.training_stages["stage2"]) == {"user_proj", "item_proj"}
    trainer.fit(train_data, valid_data, saved=False)
    losses = [trainer.stage_train_loss["stage2"][e] for e in sorted(trainer.stage_train_loss["stage2"])]
    assert losses[-1] < losses[0], losses

    model.eval()
    batch = next(iter(test_data))[0]
    with torch.no_grad():
        scores = model.predict(batch)
        again = model.predict(batch)
    assert scores.shape == (len(batch),) and torch.isfinite(scores).all() and (scores < 0).all()
    assert torch.equal(scores, again)  # the shuffle and the tie-break are seeded per user

    # a score is the log-likelihood of the candidate's title (+ EOS) after the user's prompt
    from recbole_llmsrec.llm.scoring import naive_continuation_logprobs

    rows = (batch["user_id"] == batch["user_id"][0]).nonzero().squeeze(1)
    candidates = batch["item_id"][rows].tolist()
    order = torch.randperm(len(rows), generator=model._user_generator(batch["user_id"][0])).tolist()
    seq, length = batch["item_id_list"][rows[:1]], batch["item_length"][rows[:1]]
    history = seq[0, max(0, int(length) - model.prompt_history_len): int(length)].tolist()
    prompt, soft_items = model.listwise_prompt(history, [candidates[i] for i in order])
    with torch.no_grad():
        embeds, _ = model._prompt_embeds([prompt], soft_items, seq, length)
        reference = naive_continuation_logprobs(model.llm.model, embeds[0], [model.answer(i) for i in candidates])
        raw = model.title_likelihood_predict(batch, tie_break=False)[rows]
    assert torch.allclose(raw, reference, atol=1e-4)
    # the tie-break reorders equal scores only, and leaves none equal
    block = scores[rows]
    differ = raw[:, None] != raw[None, :]
    assert torch.equal(torch.sign(block[:, None] - block[None, :])[differ], torch.sign(raw[:, None] - raw[None, :])[differ])
    assert len(block.unique()) == len(block)

    with pytest.raises(NotImplementedError, match="uni19"):
        model.full_sort_predict(batch)
    with pytest.raises(ValueError, match="eval_batch_size"):
        model.predict(batch[torch.arange(len(rows) + 3)])


def test_candidates_are_shuffled_inside_the_prompt(allmrec_config):
    _, _, _, test_data, model, _ = build({**allmrec_config, "scoring": "title_likelihood", "eval_args": uni(9),
                                          "eval_batch_size": 500})
    batch = next(iter(test_data))[0]
    positions = []
    for user in batch["user_id"].unique_consecutive().tolist():
        order = torch.randperm(10, generator=model._user_generator(user)).tolist()
        positions.append(order.index(0))  # where the positive (row 0 of the block) lands in the prompt
    assert len(set(positions)) > 3


def test_generate_text_answers_from_the_aligned_user_vector(allmrec_config):
    _, _, _, _, model, _ = build(allmrec_config)
    seen = {}
    generate = model.llm.model.generate

    def spy(**kwargs):
        seen.update(kwargs)
        seen["output"] = generate(**kwargs)
        return seen["output"]

    model.llm.model.generate = spy
    text = model.generate_text([1, 2, 3], "Which genres does this user like?", max_new_tokens=6)
    assert text == model.llm.tokenizer.decode(seen["output"][0], skip_special_tokens=True).strip()
    assert 0 < seen["output"].shape[1] <= 6
    # the prompt carries F_U(teacher state) at [UserRep] and F_I(enc_I(E_i)) after each history title
    with torch.no_grad():
        user = model.user_soft_prefix(torch.tensor([[1, 2, 3]]), torch.tensor([3]))[0]
        items = model.item_soft_tokens(torch.tensor([1, 2, 3]))
    embeds = seen["inputs_embeds"][0]
    ids = model.question_prompt([1, 2, 3], "Which genres does this user like?")
    assert embeds.shape[0] == len(ids)
    assert torch.allclose(embeds[ids.index(model.prompts.user_rep_id)], user, atol=1e-6)
    slots = [i for i, token in enumerate(ids) if token == model.prompts.history_emb_id]
    assert torch.allclose(embeds[slots], items, atol=1e-6)
    with pytest.raises(ValueError, match="at least one item"):
        model.generate_text([], "Which genres?")


def test_runs_through_quick_start_and_answers_from_the_command_line(allmrec_config, capsys):
    result = run_recbole_llmsrec(model="ALLMRec", config_dict={**allmrec_config, "epochs": 1, "allmrec_stage1_epochs": 1})
    assert result["saved_model_file"].endswith("-stage2.pth") and os.path.isfile(result["saved_model_file"])
    assert 0.0 <= result["test_result"]["ndcg@10"] <= 1.0

    # the command line answers about a saved model's user, by user id or by items
    from recbole_llmsrec.generate import describe, load_trained_model, main, user_history

    model, dataset = load_trained_model(result["saved_model_file"])
    history = user_history(dataset, "1")
    assert len(history) == int((dataset.inter_feat["user_id"] == dataset.token2id("user_id", "1")).sum()) > 0
    by_user = describe(result["saved_model_file"], "Which genres?", user="1", max_new_tokens=4)
    assert by_user == model.generate_text(history, "Which genres?", max_new_tokens=4)
    main(["--model_file", result["saved_model_file"], "--items", "1,2,3", "--max_new_tokens", "3"])
    assert capsys.readouterr().out.endswith("\n")
    with pytest.raises(ValueError, match="not in dataset"):
        describe(result["saved_model_file"], "Which genres?", user="no-such-user")


def test_the_official_schedule_reaches_both_stages(allmrec_config):
    """ALLMRec.yaml: the official code's stage 1 (lr 1e-4, 10 epochs, text reconstruction weight 0.2)
    and Adam betas (0.9, 0.98) in both stages, each stage with its own optimiser."""
    official = ("allmrec_stage1_epochs", "allmrec_stage1_learning_rate", "allmrec_text_recon_weight", "learning_rate")
    _, _, _, _, model, trainer = build({key: value for key, value in allmrec_config.items() if key not in official})
    assert model.stage_settings("stage1") == {"epochs": 10, "learning_rate": 1e-4, "checkpoint": None}
    assert model.stage_settings("stage2")["learning_rate"] == 1e-4 and model.text_recon_weight == 0.2
    assert model.item_recon_weight == 0.5 and trainer.adam_betas == (0.9, 0.98) and trainer.lr_scheduler is None
    for stage in ("stage1", "stage2"):
        trainer._enter_stage(stage)
        trainer.learning_rate = model.stage_settings(stage)["learning_rate"]
        optimizer = trainer._build_optimizer()
        assert type(optimizer) is torch.optim.Adam
        assert [(group["lr"], group["betas"]) for group in optimizer.param_groups] == [(1e-4, (0.9, 0.98))]
        trained = {id(p) for p in model.parameters() if p.requires_grad}
        assert {id(p) for group in optimizer.param_groups for p in group["params"]} == trained
