"""The training schedule settings of ``recbole_llmsrec.trainer.ScheduledTrainer`` (``adam_betas``,
``valid_per_epoch``, ``lr_decay_per_valid``, ``lr_schedule`` with its warm-up and floor,
``gradient_accumulation_steps``, and RecBole's ``weight_decay``) on LLMSRec (and A-LLMRec's stages)
with the tiny data and a tiny Llama; with the defaults, training is RecBole's ``Trainer.fit``."""

import json
import logging
import math
import re

import pytest
import torch
from recbole.trainer import Trainer
from recbole.utils import init_seed

from recbole_llmsrec.compat import load_recbole_checkpoint
from recbole_llmsrec.config import Config
from recbole_llmsrec.quick_start import _build
from recbole_llmsrec import trainer as trainer_module
from recbole_llmsrec.trainer import LLaRATrainer, StepSchedule, duration, schedule_settings, training_estimate


def build(config_dict, model="LLMSRec", **overrides):
    config = Config(model=model, config_dict={**config_dict, **overrides})
    init_seed(config["seed"], config["reproducibility"])
    return config, _build(config)


def trained(model):
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def part_ends(n, k):
    """Batches done at each validation of an epoch of n batches in k parts (the last at its end)."""
    return sorted({n * i // k for i in range(1, k + 1)} - {0})


def record_losses(model):
    """Wrap ``calculate_loss``: each batch's loss terms as floats, and whether the model was training."""
    batches = []
    calculate_loss = model.calculate_loss

    def recorded(interaction):
        losses = calculate_loss(interaction)
        batches.append(([term.item() for term in losses], model.training))
        return losses

    model.calculate_loss = recorded
    return batches


def test_adam_betas_reach_the_optimiser(tiny_config_dict):
    _, (*_, trainer) = build(tiny_config_dict)
    assert trainer.optimizer.param_groups[0]["betas"] == (0.9, 0.999)  # empty: torch's
    assert trainer.lr_scheduler is None
    for learner, optimizer_class in (("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)):
        _, (*_, trainer) = build(tiny_config_dict, learner=learner, adam_betas=[0.9, 0.98])
        assert type(trainer.optimizer) is optimizer_class
        assert [group["betas"] for group in trainer.optimizer.param_groups] == [(0.9, 0.98)]
        assert trainer.optimizer.defaults["betas"] == (0.9, 0.98)
    # the betas are used: one step from the same start differs from a step with torch's
    updates = []
    for betas in ([0.9, 0.999], [0.5, 0.6]):
        _, (_, train_data, _, _, model, trainer) = build(tiny_config_dict, adam_betas=betas)
        batch = next(iter(train_data))
        for _ in range(2):
            trainer.optimizer.zero_grad()
            sum(model.calculate_loss(batch)).backward()
            trainer.optimizer.step()
        updates.append(trained(model))
    assert any(not torch.equal(updates[0][name], updates[1][name]) for name in updates[0])

    for bad in ([0.9], [0.9, 1.0], "0.9, 0.98"):
        with pytest.raises(ValueError, match="adam_betas"):
            schedule_settings({"adam_betas": bad, "valid_per_epoch": 1, "lr_decay_per_valid": None})
    for key, bad in (("valid_per_epoch", 0), ("valid_per_epoch", 2.5), ("lr_decay_per_valid", 0), ("lr_decay_per_valid", "x")):
        with pytest.raises(ValueError, match=key):
            schedule_settings({"adam_betas": None, "valid_per_epoch": 1, "lr_decay_per_valid": None, key: bad})


def test_schedule_settings_are_checked():
    def settings(**overrides):
        return schedule_settings({"adam_betas": None, "valid_per_epoch": 1, "lr_decay_per_valid": None,
                                  "lr_schedule": "constant", "lr_warmup_ratio": 0.0, "lr_min_ratio": 0.0,
                                  "gradient_accumulation_steps": 1, **overrides})

    assert settings() == (None, 1, None, "constant", 0.0, 0.0, 1)
    # keys left empty or absent (a config built without our overall.yaml) have their defaults
    assert schedule_settings({}) == settings() == settings(lr_schedule=None, lr_warmup_ratio=None)
    assert settings(lr_schedule="cosine", lr_warmup_ratio=0.05, lr_min_ratio=0.01, gradient_accumulation_steps=16)[3:] == (
        "cosine", 0.05, 0.01, 16)
    for key, bad in (("lr_schedule", "exponential"), ("lr_schedule", 1), ("lr_warmup_ratio", 1.0),
                     ("lr_warmup_ratio", -0.1), ("lr_warmup_ratio", True), ("lr_warmup_ratio", "0.1"),
                     ("lr_min_ratio", 1.5), ("lr_min_ratio", -1), ("gradient_accumulation_steps", 0),
                     ("gradient_accumulation_steps", 2.0), ("gradient_accumulation_steps", True)):
        with pytest.raises(ValueError, match=f"^{key} must be"):
            settings(**{key: bad})
    # a decay per validation and a per-step schedule both set the rate: an error naming both keys
    for per_step in ({"lr_schedule": "cosine"}, {"lr_schedule": "linear"}, {"lr_warmup_ratio": 0.1}):
        with pytest.raises(ValueError, match=r"lr_decay_per_valid \(0.5\) and lr_schedule: .* lr_warmup_ratio"):
            settings(lr_decay_per_valid=0.5, **per_step)
    assert settings(lr_decay_per_valid=0.5, lr_min_ratio=0.1)[2] == 0.5  # a floor alone schedules nothing


def expected_lr(lr, step, total, warmup_ratio, floor, shape):
    """The closed form of ``lr_schedule`` at optimiser step ``step`` of ``total``."""
    warmup = int(warmup_ratio * total)
    if step < warmup:
        return lr * (floor + (1 - floor) * step / warmup)
    progress = (step - warmup) / (total - warmup)
    decay = {"constant": 1.0, "linear": 1 - progress, "cosine": 0.5 * (1 + math.cos(math.pi * progress))}[shape]
    return lr * (floor + (1 - floor) * decay) if shape != "constant" else lr


def record_lrs(model, trainer):
    """Wrap ``calculate_loss``: the learning rate each training batch is trained at."""
    lrs = []
    calculate_loss = model.calculate_loss
    model.calculate_loss = lambda interaction: lrs.append(trainer.optimizer.param_groups[0]["lr"]) or calculate_loss(interaction)
    return lrs


@pytest.mark.parametrize("shape, warmup, floor", [("cosine", 0.25, 0.1), ("linear", 0.2, 0.0), ("constant", 0.3, 0.5)])
def test_the_learning_rate_follows_its_schedule_every_step(tiny_config_dict, shape, warmup, floor):
    config, (_, train_data, valid_data, _, model, trainer) = build(
        tiny_config_dict, epochs=2, valid_per_epoch=2, lr_schedule=shape, lr_warmup_ratio=warmup, lr_min_ratio=floor)
    assert isinstance(trainer.lr_scheduler, StepSchedule) and trainer.lr_scheduler.optimizer is trainer.optimizer
    lr, n = config["learning_rate"], len(train_data)
    lrs = record_lrs(model, trainer)
    params = []
    step = trainer.optimizer.step
    trainer.optimizer.step = lambda *args, **kwargs: params.append(trained(model)) or step(*args, **kwargs)
    trainer.fit(train_data, valid_data, saved=False)

    total = 2 * n
    assert trainer.lr_scheduler.total_steps == total and int(warmup * total) >= 2
    assert lrs == pytest.approx([expected_lr(lr, s, total, warmup, floor, shape) for s in range(total)], rel=1e-12)
    assert lrs[0] == pytest.approx(lr * floor) and max(lrs) <= lr
    if shape != "constant":
        assert all(a != b for a, b in zip(lrs, lrs[1:]))  # a new rate every step, not every epoch
        assert lrs[-1] < lrs[total // 2] < lr
    # every batch is an optimiser step, and each validation logs the rate of the step before it
    assert len(params) == total
    assert [h["lr"] for h in trainer.valid_history] == [lrs[h["step"] - 1] for h in trainer.valid_history]


def test_a_resumed_run_continues_the_same_curve(tiny_config_dict):
    settings = {"epochs": 3, "valid_per_epoch": 2, "lr_schedule": "cosine", "lr_warmup_ratio": 0.2, "lr_min_ratio": 0.05}
    _, (_, train_data, valid_data, _, model, trainer) = build(tiny_config_dict, **settings)
    n = len(train_data)
    lrs = record_lrs(model, trainer)
    scores = iter([0.1, 0.9, 0.2, 0.3, 0.2, 0.1])  # the best: after epoch 0, its second part
    trainer._valid_epoch = lambda data, show_progress=False: (lambda score: (score, {"ndcg@10": score}))(next(scores))
    trainer.fit(train_data, valid_data, saved=True)
    assert len(lrs) == 3 * n
    checkpoint = load_recbole_checkpoint(trainer.saved_model_file)
    assert checkpoint["epoch"] == 0
    state = checkpoint["optimizer"]["lr_scheduler"]
    assert state["step"] == n - 1 and state["total_steps"] == 3 * n and state["lr_schedule"] == "cosine"

    _, (_, train_data, valid_data, _, model, resumed) = build(
        tiny_config_dict, **settings, resume_checkpoint=trainer.saved_model_file)
    assert resumed.start_epoch == 1 and resumed.lr_scheduler.step_index == n - 1
    again = record_lrs(model, resumed)
    resumed.fit(train_data, valid_data, saved=False)
    assert again == lrs[n:]  # epochs 1 and 2 at the rates the uninterrupted run had

    # a checkpoint written between the parts of an epoch resumes at the next epoch, on the curve too
    scores = iter([0.9, 0.1, 0.1, 0.1, 0.1, 0.1])
    _, (_, train_data, valid_data, _, model, trainer) = build(tiny_config_dict, **settings)
    trainer._valid_epoch = lambda data, show_progress=False: (lambda score: (score, {"ndcg@10": score}))(next(scores))
    trainer.fit(train_data, valid_data, saved=True)
    assert load_recbole_checkpoint(trainer.saved_model_file)["optimizer"]["lr_scheduler"]["step"] == n // 2 - 1
    _, (_, train_data, valid_data, _, model, resumed) = build(
        tiny_config_dict, **settings, resume_checkpoint=trainer.saved_model_file)
    again = record_lrs(model, resumed)
    resumed.fit(train_data, valid_data, saved=False)
    assert resumed.start_epoch == 1 and again == lrs[n:]


def test_gradient_accumulation_steps_on_the_mean_of_its_batches(tiny_config_dict):
    k = 3
    config, (_, train_data, valid_data, _, model, trainer) = build(
        tiny_config_dict, epochs=2, valid_per_epoch=2, gradient_accumulation_steps=k, lr_schedule="cosine",
        lr_warmup_ratio=0.25, clip_grad_norm={"max_norm": 1e-3})
    n = len(train_data)
    assert n % k and n > k  # a shorter last group in each epoch
    steps_per_epoch = math.ceil(n / k)
    optimizer = trainer.optimizer
    name, param = next((name, p) for name, p in model.named_parameters() if p.requires_grad)
    batch_grads, stepped = [], []
    param.register_hook(lambda grad: batch_grads.append(grad.detach().clone()))
    step = optimizer.step

    def recorded_step(*args, **kwargs):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        stepped.append((len(batch_grads), param.grad.detach().clone(), torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(g) for g in grads])).item()))
        return step(*args, **kwargs)

    optimizer.step = recorded_step
    lrs = record_lrs(model, trainer)
    trainer.fit(train_data, valid_data, saved=True)

    assert trainer.optimizer is optimizer and trainer.clip_grad_norm == {"max_norm": 1e-3}  # put back after each epoch
    assert len(batch_grads) == len(lrs) == 2 * n  # every batch trains, its loss recorded
    assert sum(h["train_batches"] for h in trainer.valid_history) == 2 * n
    groups = [(e * n + start, e * n + min(start + k, n)) for e in range(2) for start in range(0, n, k)]
    assert len(stepped) == 2 * steps_per_epoch == len(groups)
    for (start, end), (seen, grad, norm) in zip(groups, stepped):
        assert seen == end  # the step comes after the group's last batch
        mean = torch.stack(batch_grads[start:end]).mean(0)
        assert norm <= 1e-3 * (1 + 1e-5)  # clipped after averaging: the mean, scaled down
        assert torch.allclose(grad / torch.linalg.vector_norm(grad), mean / torch.linalg.vector_norm(mean), atol=1e-5)
    # without clipping the step's gradient is exactly the mean of its batches'
    _, (_, train_data, _, _, model, trainer) = build(tiny_config_dict, epochs=1, gradient_accumulation_steps=k)
    name, param = next((name, p) for name, p in model.named_parameters() if p.requires_grad)
    batch_grads, at_step = [], []
    param.register_hook(lambda grad: batch_grads.append(grad.detach().clone()))
    step = trainer.optimizer.step
    trainer.optimizer.step = lambda *args, **kwargs: at_step.append(param.grad.detach().clone()) or step(*args, **kwargs)
    trainer.fit(train_data, None, saved=False)
    assert len(at_step) == steps_per_epoch
    for index, grad in enumerate(at_step):
        assert torch.allclose(grad, torch.stack(batch_grads[index * k:(index + 1) * k]).mean(0), rtol=1e-5, atol=1e-8)
    # the schedule counts optimiser steps: the batches of a group train at one rate
    total = 2 * steps_per_epoch
    assert lrs == pytest.approx([expected_lr(config["learning_rate"], e * steps_per_epoch + b // k, total, 0.25, 0.0, "cosine")
                                 for e in range(2) for b in range(n)], rel=1e-12)


def test_weight_decay_reaches_the_optimiser(tiny_config_dict):
    _, (*_, model, trainer) = build(tiny_config_dict, learner="adamw", weight_decay=0.01, learning_rate=0.1)
    assert type(trainer.optimizer) is torch.optim.AdamW
    assert [group["weight_decay"] for group in trainer.optimizer.param_groups] == [0.01]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for group in trainer.optimizer.param_groups for p in group["params"]} == trainable
    # a step with zero gradients is the decoupled decay alone: p <- p (1 - lr x weight_decay)
    before = trained(model)
    for group in trainer.optimizer.param_groups:
        for p in group["params"]:
            p.grad = torch.zeros_like(p)
    trainer.optimizer.step()
    for name, value in trained(model).items():
        assert torch.allclose(value, before[name] * (1 - 0.1 * 0.01), rtol=0, atol=1e-7), name
    _, (*_, trainer) = build(tiny_config_dict)  # RecBole's default: none
    assert [group["weight_decay"] for group in trainer.optimizer.param_groups] == [0.0]


def test_validations_between_parts_of_an_epoch(tiny_config_dict, caplog):
    _, (_, train_data, valid_data, _, model, trainer) = build(tiny_config_dict, epochs=2, valid_per_epoch=3)
    n = len(train_data)
    assert n >= 3
    batches = record_losses(model)
    epochs_called = []
    train_epoch = trainer._train_epoch  # wrapped as the leaderboard times it
    trainer._train_epoch = lambda data, epoch_idx, **kwargs: epochs_called.append(epoch_idx) or train_epoch(data, epoch_idx, **kwargs)
    snapshots = []
    with caplog.at_level(logging.INFO):
        best_score, best_result = trainer.fit(train_data, valid_data, saved=True,
                                              callback_fn=lambda epoch_idx, score: snapshots.append(trained(model)))

    history = trainer.valid_history
    ends = part_ends(n, 3)
    assert len(ends) == 3 and len(history) == 2 * 3 == len(snapshots)
    assert [h["epoch"] for h in history] == pytest.approx([e + done / n for e in range(2) for done in ends])
    assert [h["epoch_idx"] for h in history] == [0, 0, 0, 1, 1, 1]
    steps = [e * n + done for e in range(2) for done in ends]
    assert [h["step"] for h in history] == steps
    assert [h["train_batches"] for h in history] == [b - a for a, b in zip([0] + steps, steps)]
    assert epochs_called == [0, 1]  # once per epoch; the validations between parts run inside
    assert len(batches) == 2 * n and all(training for _, training in batches)  # train mode again after each validation
    # each loss term's mean since the previous validation, and the epochs' sums as RecBole keeps them
    start = 0
    for h in history:
        terms = [losses for losses, _ in batches[start : start + h["train_batches"]]]
        start += h["train_batches"]
        assert len(h["train_loss_terms"]) == 3
        assert h["train_loss_terms"] == pytest.approx([sum(t[i] for t in terms) / len(terms) for i in range(3)])
        assert h["train_loss"] == pytest.approx(sum(h["train_loss_terms"]))
        assert h["train_seconds"] > 0 and h["valid_seconds"] > 0 and h["lr"] == 0.001
    for epoch in range(2):
        assert trainer.train_loss_dict[epoch] == pytest.approx(sum(sum(t) for t, _ in batches[epoch * n : (epoch + 1) * n]))
    assert len(trainer.epoch_train_seconds) == 2
    json.dumps(history, allow_nan=False)

    # the best validation (the last of equal scores, as RecBole's early stopping) is the checkpoint
    scores = [h["valid_score"] for h in history]
    best = max(range(len(scores)), key=lambda i: (scores[i], i))
    assert [h["best"] for h in history] == [scores[i] >= max(scores[: i + 1]) for i in range(len(scores))]
    assert best_score == scores[best] and dict(best_result) == history[best]["valid_result"]
    checkpoint = load_recbole_checkpoint(trainer.saved_model_file)
    assert checkpoint["best_valid_score"] == scores[best] and checkpoint["epoch"] == history[best]["epoch_idx"]
    assert checkpoint["state_dict"].keys() == snapshots[best].keys()
    for name, value in checkpoint["state_dict"].items():
        assert torch.equal(value, snapshots[best][name]), name
    # every validation is logged with its epoch as a fraction
    for h in history:
        assert f"epoch {h['epoch_idx']} ({h['epoch']:.4g} epochs trained) evaluating" in caplog.text


def test_lr_decays_per_validation_and_resumes_with_its_schedule(tiny_config_dict):
    config, (_, train_data, valid_data, _, model, trainer) = build(
        tiny_config_dict, epochs=2, valid_per_epoch=3, lr_decay_per_valid=0.5)
    lr0 = config["learning_rate"]
    trainer.fit(train_data, valid_data, saved=True)
    history = trainer.valid_history
    assert len(history) == 6
    assert [h["lr"] for h in history] == [lr0 * 0.5**i for i in range(6)]  # the lr each interval trained with
    assert trainer.optimizer.param_groups[0]["lr"] == lr0 * 0.5**6
    assert trainer.lr_scheduler.last_epoch == 6

    # the checkpoint of the best validation holds the schedule after that validation's decay
    best = max(i for i, h in enumerate(history) if h["best"])
    checkpoint = load_recbole_checkpoint(trainer.saved_model_file)
    assert checkpoint["optimizer"]["lr_scheduler"]["last_epoch"] == best + 1
    assert checkpoint["optimizer"]["param_groups"][0]["lr"] == lr0 * 0.5 ** (best + 1)

    _, (_, train_data, valid_data, _, _, resumed) = build(
        tiny_config_dict, epochs=3, valid_per_epoch=3, lr_decay_per_valid=0.5, resume_checkpoint=trainer.saved_model_file)
    assert resumed.start_epoch == history[best]["epoch_idx"] + 1  # a resumed run starts at the next epoch
    assert resumed.lr_scheduler.last_epoch == best + 1
    assert resumed.optimizer.param_groups[0]["lr"] == lr0 * 0.5 ** (best + 1)
    resumed.fit(train_data, valid_data, saved=True)
    again = resumed.valid_history
    assert len(again) == 3 * (3 - resumed.start_epoch) and again[0]["epoch_idx"] == resumed.start_epoch
    assert [h["lr"] for h in again] == [lr0 * 0.5 ** (best + 1 + i) for i in range(len(again))]
    assert resumed.lr_scheduler.last_epoch == best + 1 + len(again)


@pytest.mark.parametrize("settings", [{"epochs": 3, "eval_step": 1, "stopping_step": 10},
                                      {"epochs": 4, "eval_step": 2, "stopping_step": 0}])
def test_defaults_train_as_recboles_fit(tiny_config_dict, settings):
    build(tiny_config_dict)  # trains and caches the teacher, so both runs below load it
    runs = {}
    for fit in ("plugin", "recbole"):
        _, (_, train_data, valid_data, _, model, trainer) = build(tiny_config_dict, **settings)
        scores = []
        valid_epoch = trainer._valid_epoch
        trainer._valid_epoch = lambda data, **kwargs: (lambda result: scores.append(result[0]) or result)(valid_epoch(data, **kwargs))
        fit_method = trainer.fit if fit == "plugin" else lambda *args, **kwargs: Trainer.fit(trainer, *args, **kwargs)
        result = fit_method(train_data, valid_data, saved=True)
        runs[fit] = {"result": result, "scores": scores, "losses": dict(trainer.train_loss_dict), "params": trained(model),
                     "checkpoint": load_recbole_checkpoint(trainer.saved_model_file)["state_dict"],
                     "lr": trainer.optimizer.param_groups[0]["lr"]}
        if fit == "plugin":
            assert [h["valid_score"] for h in trainer.valid_history] == scores
            assert [h["epoch"] for h in trainer.valid_history] == [float(e + 1) for e in range(settings["epochs"])
                                                                   if (e + 1) % settings["eval_step"] == 0][: len(scores)]
    plugin, recbole = runs["plugin"], runs["recbole"]
    assert len(plugin["scores"]) == len(recbole["scores"]) > 0
    assert plugin["scores"] == recbole["scores"] and plugin["result"] == recbole["result"]
    assert plugin["losses"] == recbole["losses"] and plugin["lr"] == recbole["lr"]
    for name in plugin["params"]:
        assert torch.equal(plugin["params"][name], recbole["params"][name]), name
        assert torch.equal(plugin["checkpoint"][name], recbole["checkpoint"][name]), name


def test_early_stopping_counts_validations(tiny_config_dict):
    _, (_, train_data, valid_data, _, model, trainer) = build(tiny_config_dict, epochs=5, valid_per_epoch=3, stopping_step=1)
    n = len(train_data)
    batches = record_losses(model)
    scores = iter([0.5, 0.6, 0.4, 0.3, 0.9, 0.9, 0.9, 0.9])  # patience 1: the fourth validation stops

    def scripted_valid(data, show_progress=False):
        score = next(scores)
        return score, {"ndcg@10": score}

    trainer._valid_epoch = scripted_valid
    best_score, _ = trainer.fit(train_data, valid_data, saved=True)
    ends = part_ends(n, 3)
    assert len(trainer.valid_history) == 4 and best_score == 0.6
    assert trainer.valid_history[-1]["epoch"] == pytest.approx(1 + ends[0] / n)  # inside the second epoch
    assert len(batches) == n + ends[0]  # the rest of that epoch is not trained
    assert sorted(trainer.train_loss_dict) == [0, 1]
    checkpoint = load_recbole_checkpoint(trainer.saved_model_file)
    assert checkpoint["best_valid_score"] == 0.6 and checkpoint["epoch"] == 0


def test_llara_curriculum_counts_steps_through_the_parts(tiny_config_dict):
    config, (_, train_data, valid_data, _, model, _) = build(tiny_config_dict, epochs=2, valid_per_epoch=2)
    trainer = LLaRATrainer(config, model)  # its curriculum only sets model.curriculum_progress
    progress = []
    calculate_loss = model.calculate_loss
    model.calculate_loss = lambda interaction: progress.append(model.curriculum_progress) or calculate_loss(interaction)
    trainer.fit(train_data, valid_data, saved=False)
    total = 2 * len(train_data)
    assert len(trainer.valid_history) == 4
    assert progress == [step / total for step in range(total)]


def test_each_stage_has_its_own_schedule(tiny_config_dict, tiny_encoder_path):
    config, (_, train_data, valid_data, _, model, trainer) = build(
        # llm_head_cache off: this test is about the trainer, and A-LLMRec's stage 2 currently fails with it
        {**tiny_config_dict, "text_encoder_path": tiny_encoder_path, "allmrec_latent_dim": 8, "prompt_show_dates": False,
         "llm_head_cache": False},
        model="ALLMRec", allmrec_stage1_epochs=2, allmrec_stage1_learning_rate=0.01, epochs=1, learning_rate=0.002,
        valid_per_epoch=2, lr_decay_per_valid=0.5, adam_betas=[0.8, 0.9])
    optimizers = []
    build_optimizer = trainer._build_optimizer
    trainer._build_optimizer = lambda **kwargs: optimizers.append(build_optimizer(**kwargs)) or optimizers[-1]
    trainer.fit(train_data, valid_data, saved=True)
    assert len(optimizers) == 2 and all(group["betas"] == (0.8, 0.9) for opt in optimizers for group in opt.param_groups)
    stages = [h["stage"] for h in trainer.valid_history]
    assert stages == ["stage1"] * 4 + ["stage2"] * 2
    assert [h["lr"] for h in trainer.valid_history] == [0.01 * 0.5**i for i in range(4)] + [0.002 * 0.5**i for i in range(2)]
    assert optimizers[1].param_groups[0]["lr"] == 0.002 * 0.5**2 and trainer.lr_scheduler.optimizer is optimizers[1]
    assert load_recbole_checkpoint(trainer.saved_model_file)["optimizer"]["lr_scheduler"]["base_lrs"] == [0.002]


def test_each_stage_has_its_own_step_schedule(tiny_config_dict, tiny_encoder_path):
    config, (_, train_data, valid_data, _, model, trainer) = build(
        {**tiny_config_dict, "text_encoder_path": tiny_encoder_path, "allmrec_latent_dim": 8, "prompt_show_dates": False,
         "llm_head_cache": False},
        model="ALLMRec", allmrec_stage1_epochs=2, allmrec_stage1_learning_rate=0.01, epochs=1, learning_rate=0.002,
        lr_schedule="cosine", lr_warmup_ratio=0.2, lr_min_ratio=0.1, learner="adamw", weight_decay=0.001)
    assert trainer.adam_betas == (0.9, 0.98)  # ALLMRec.yaml: the official betas
    n = len(train_data)
    seen = []
    calculate_loss = model.calculate_loss
    model.calculate_loss = lambda interaction: seen.append(
        (model.stage, trainer.optimizer.param_groups[0]["lr"], trainer.optimizer)) or calculate_loss(interaction)
    trainer.fit(train_data, valid_data, saved=True)
    stage1 = [lr for stage, lr, _ in seen if stage == "stage1"]
    stage2 = [lr for stage, lr, _ in seen if stage == "stage2"]
    assert stage1 == pytest.approx([expected_lr(0.01, s, 2 * n, 0.2, 0.1, "cosine") for s in range(2 * n)], rel=1e-12)
    assert stage2 == pytest.approx([expected_lr(0.002, s, n, 0.2, 0.1, "cosine") for s in range(n)], rel=1e-12)
    optimizers = {stage: opt for stage, _, opt in seen}
    assert optimizers["stage1"] is not optimizers["stage2"]
    for optimizer in optimizers.values():
        assert type(optimizer) is torch.optim.AdamW and optimizer.param_groups[0]["weight_decay"] == 0.001
        assert optimizer.param_groups[0]["betas"] == (0.9, 0.98)
    state = load_recbole_checkpoint(trainer.saved_model_file)["optimizer"]["lr_scheduler"]
    assert state["total_steps"] == n and state["base_lrs"] == [0.002]


def test_durations_and_estimates_are_readable_arithmetic():
    assert [duration(s) for s in (0.04, 8.46, 95, 119.4, 1500, 7199, 45000)] == [
        "0.0 s", "8.5 s", "95 s", "119 s", "25 min", "120 min", "12.5 h"]
    assert training_estimate(31.25, 48, 30) == (1500, 45000)  # 25 min an epoch, 12.5 h for 30
    assert training_estimate(31.25, 48, 30, valid_seconds=300) == (1800, 54000)
    assert training_estimate(31.25, 48, 30, valid_seconds=300, valid_per_epoch=3) == (2400, 72000)
    assert training_estimate(31.25, 48, 30, valid_seconds=300, valid_per_epoch=0.5) == (1650, 49500)
    assert training_estimate(2.0, 10, 0) == (20, 0)


def test_fit_logs_its_estimates(tiny_config_dict, caplog, monkeypatch):
    """After the first batches: an epoch and the epochs left; after the first validation: the whole run."""
    monkeypatch.setattr(trainer_module, "duration", lambda seconds: f"<{seconds!r}>")  # exact, to check the arithmetic
    _, (_, train_data, valid_data, _, _, trainer) = build(tiny_config_dict, epochs=2, valid_per_epoch=2)
    n = len(train_data)
    with caplog.at_level(logging.INFO):
        trainer.fit(train_data, valid_data, saved=False)
    number = r"<([0-9.e+-]+)>"
    first = [r.getMessage() for r in caplog.records if " batches in " in r.getMessage()]
    assert len(first) == 1, first
    done, of, seconds, epoch, total = re.fullmatch(
        rf"LLMSRec: (\d+) of (\d+) batches in {number}; estimated from them, an epoch takes about {number}, "
        rf"up to 2 epochs about {number} of training \(early stopping, patience 10 validations, usually ends it "
        rf"sooner\); the first validation will show how long one takes", first[0]).groups()
    assert int(of) == n and int(done) == min(3, n // 2)  # the first part of the epoch ends after n // 2
    assert float(epoch) == pytest.approx(float(seconds) / int(done) * n)
    assert float(total) == pytest.approx(2 * float(epoch))

    second = [r.getMessage() for r in caplog.records if "one validation takes" in r.getMessage()]
    assert len(second) == 1, second
    valid, total = re.fullmatch(rf"LLMSRec: one validation takes {number}; with valid_per_epoch 2, up to 2 epochs: "
                                rf"about {number} in all \(training and validation\)", second[0]).groups()
    h = trainer.valid_history[0]
    assert float(valid) == h["valid_seconds"]
    assert float(total) == pytest.approx(2 * (h["train_seconds"] / h["train_batches"] * n + 2 * h["valid_seconds"]))
    assert caplog.text.index(first[0]) < caplog.text.index("evaluating") < caplog.text.index(second[0])
