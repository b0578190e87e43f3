"""TALLRec, CoLLM and LLaRA on tiny data with a tiny Llama; LoRA on the shared backbone."""

import pytest
import torch
from recbole.data import data_preparation
from recbole.utils import init_seed

from recbole_llmsrec.compat import load_recbole_checkpoint
from recbole_llmsrec.config import Config
from recbole_llmsrec.data import create_dataset
from recbole_llmsrec.data.rows import SampledRowsTrainDataLoader
from recbole_llmsrec.llm.backbone import LLMBackbone
from recbole_llmsrec.llm.scoring import break_ties, seeded_generator
from recbole_llmsrec.quick_start import _build
from recbole_llmsrec.teacher import load_teacher
from recbole_llmsrec.trainer import StepSchedule

LORA = {"lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.5, "lora_target_modules": ["q_proj", "v_proj"]}


def test_lora_backbone_trains_adapters_only(tiny_config_dict):
    config = Config(model="LLMSRec", config_dict={**tiny_config_dict, **LORA})
    llm = LLMBackbone.from_config(config, lora=True)
    trainable = [name for name, p in llm.named_parameters() if p.requires_grad]
    assert llm.has_lora and trainable and all("lora_" in name for name in trainable)
    assert any(name.endswith("q_proj.lora_A.default.weight") for name in trainable)
    assert not any("k_proj" in name for name in trainable)

    # LoRA's dropout follows the mode; the base LM never drops out
    llm.train()
    modes = {name: m.training for name, m in llm.model.named_modules()}
    assert all(mode for name, mode in modes.items() if name.endswith("lora_dropout"))
    assert not any(mode for name, mode in modes.items() if "lora_dropout" not in name)
    ids = torch.tensor([[5, 6, 7, 8]])
    mask = torch.ones_like(ids)
    for name, p in llm.named_parameters():  # nonzero B, so the adapter path (and its dropout) shows
        if "lora_B" in name:
            p.data.normal_(0, 0.5)
    torch.manual_seed(0)
    assert not torch.allclose(llm.encode(ids, mask, {}), llm.encode(ids, mask, {}))
    llm.eval()
    assert not any(m.training for m in llm.model.modules())
    assert torch.equal(llm.encode(ids, mask, {}), llm.encode(ids, mask, {}))

    base_before = {n: p.detach().clone() for n, p in llm.named_parameters() if not p.requires_grad}
    lora_before = {n: p.detach().clone() for n, p in llm.named_parameters() if p.requires_grad}
    optimizer = torch.optim.Adam([p for p in llm.parameters() if p.requires_grad], lr=0.01)
    llm.train()
    llm.encode(ids, mask, {}).pow(2).mean().backward()
    optimizer.step()
    assert all(torch.equal(p, base_before[n]) for n, p in llm.named_parameters() if not p.requires_grad)
    assert all(not torch.equal(p, lora_before[n]) for n, p in llm.named_parameters() if p.requires_grad)


def test_lora_backbone_names_missing_settings(tiny_config_dict):
    config = Config(model="LLMSRec", config_dict={**tiny_config_dict, **LORA, "lora_alpha": None})
    with pytest.raises(KeyError, match=r"\['lora_alpha'\] are not set; set them in properties/model/LLMSRec.yaml"):
        LLMBackbone.from_config(config, lora=True)


# ---- the three models ------------------------------------------------------------------------------

MODELS = ("TALLRec", "CoLLM", "LLaRA")
HEADS = ("user_head", "item_head", "user_out_token", "item_out_token")
PROJECTORS = {"TALLRec": (), "CoLLM": ("mapping",), "LLaRA": ("projector",)}
_teacher = {}  # one SASRec teacher for the whole file


@pytest.fixture
def baseline_config(tiny_config_dict):
    config = {**tiny_config_dict, **LORA, "lora_dropout": 0.05, "prompt_history_len": 5, "prompt_candidates": 6,
              "prompt_show_dates": False, "llm_batch_size": 7, "learning_rate": 0.01, "epochs": 1,
              "collm_lora_epochs": 1, "collm_lora_learning_rate": 0.01}
    if "path" not in _teacher:
        cfg = Config(model="LLaRA", config_dict=config)
        init_seed(cfg["seed"], True)
        dataset = create_dataset(cfg)
        train_data, _, _ = data_preparation(cfg, dataset)
        _teacher["path"] = load_teacher(cfg, train_data._dataset).checkpoint_path
    return {**config, "teacher_checkpoint": _teacher["path"]}


def build(model, config_dict, **overrides):
    config = Config(model=model, config_dict={**config_dict, **overrides})
    init_seed(config["seed"], config["reproducibility"])
    return config, _build(config)


def snapshot(model, trainable):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad == trainable}


def train_steps(model, batch, steps=12, lr=0.01):
    """A few Adam steps on one batch (same negatives and dropout each step); the losses before and after."""
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()

    def loss():
        torch.manual_seed(0)
        return model.calculate_loss(batch)

    first = loss().item()
    for _ in range(steps):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    return first, loss().item()


def test_yes_no_tokens_come_from_the_tokenizer(baseline_config):
    _, (*_, model, _) = build("TALLRec", baseline_config, scoring="native")
    tokenizer = model.llm.tokenizer
    assert model.yes_id != model.no_id
    assert "Yes".startswith(tokenizer.decode([model.yes_id]).strip())
    assert "No".startswith(tokenizer.decode([model.no_id]).strip())


@pytest.mark.parametrize("scoring", ["native", "retrieval"])
@pytest.mark.parametrize("name", MODELS)
def test_loss_falls_lora_trains_base_stays(baseline_config, name, scoring):
    config, (dataset, train_data, valid_data, test_data, model, trainer) = build(name, baseline_config, scoring=scoring)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    lora = {n for n in trainable if "lora_" in n}
    expected_rest = PROJECTORS[name] + (HEADS if scoring == "retrieval" else ())
    assert lora and {n.split(".")[0] for n in trainable - lora} == set(expected_rest)
    assert not any(p.requires_grad for p in model.llm.model.get_input_embeddings().parameters())

    batch = next(iter(train_data))
    stages = list(getattr(model, "training_stages", {None: None}))
    for stage in stages:  # CoLLM: LoRA on text prompts, then the mapping with the LoRA frozen
        if stage is not None:
            trainer._enter_stage(stage)
        base, tuned = snapshot(model, False), snapshot(model, True)
        first, last = train_steps(model, batch)
        assert last < first, (stage, first, last)
        assert all(torch.equal(p, base[n]) for n, p in model.named_parameters() if not p.requires_grad)
        changed = {n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, tuned[n])}
        assert changed == set(tuned), set(tuned) - changed
        if stage == "lora":
            assert changed == lora | {n for n in trainable if n.split(".")[0] in HEADS}
        if stage == "mapping":
            assert not any("lora_" in n for n in changed) and any(n.startswith("mapping.") for n in changed)

    # one score per candidate row
    model.eval()
    interaction = next(iter(test_data))[0]
    with torch.no_grad():
        scores = model.predict(interaction)
    assert scores.shape == (len(interaction),) and torch.isfinite(scores).all()
    if scoring == "retrieval":
        with torch.no_grad():
            full = model.full_sort_predict(interaction)
        assert full.shape == (len(interaction), dataset.item_num)
        rows = torch.arange(len(interaction))
        assert torch.allclose(full[rows, interaction["item_id"]], scores, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_cached_native_scores_equal_naive(baseline_config, name):
    _, (dataset, train_data, _, test_data, model, _) = build(name, baseline_config, scoring="native")
    train_steps(model, next(iter(train_data)), steps=3)  # nonzero LoRA B (and a trained mapping)
    model.eval()
    interaction = next(iter(test_data))[0]
    with torch.no_grad():
        cached = model.native_predict(interaction, cached=True)
        naive = model.native_predict(interaction, cached=False)
    users = interaction["user_id"].unique_consecutive()
    assert len(users) > 1 and cached.shape == (len(interaction),)
    assert torch.allclose(cached, naive, atol=1e-4), (cached - naive).abs().max()
    assert cached.std() > 1e-3  # the scores are not all alike


def test_tallrec_native_full_sort_is_gated_and_agrees_with_predict(baseline_config):
    _, (dataset, _, _, test_data, model, _) = build("TALLRec", baseline_config, scoring="native")
    interaction = next(iter(test_data))[0][[0]]
    model.eval()
    with pytest.raises(ValueError, match="native_full_sort: True"):
        model.full_sort_predict(interaction)
    model.native_full_sort = True
    with torch.no_grad():
        full = model.full_sort_predict(interaction)
        one = model.yes_no_scores(interaction["item_id_list"], interaction["item_length"], interaction["item_id"])
    assert full.shape == (1, dataset.item_num) and full[0, 0] == -torch.inf
    assert torch.isclose(full[0, interaction["item_id"][0]], one[0], atol=1e-3)  # up to the tie-break shift


def test_break_ties_keeps_order_and_breaks_ties_at_random():
    scores = torch.tensor([2.0, 1.0, 2.0, 0.5, 2.0])
    wins = []
    for seed in range(300):
        broken = break_ties(scores, seeded_generator(seed, 7))
        assert broken[[0, 2, 4]].min() > broken[1] > broken[3]  # distinct scores keep their order
        assert len(broken[[0, 2, 4]].unique()) == 3
        wins.append(int(broken[[0, 2, 4]].argmax()))
    assert torch.equal(break_ties(scores, seeded_generator(1, 7)), break_ties(scores, seeded_generator(1, 7)))
    counts = torch.bincount(torch.tensor(wins), minlength=3)
    assert counts.min() > 60  # each tied row wins about a third of the time, the first row included


def test_llara_curriculum_moves_from_text_to_hybrid(baseline_config):
    _, (dataset, train_data, valid_data, _, model, trainer) = build("LLaRA", baseline_config, scoring="native", epochs=3)
    seen = []
    calculate_loss = model.calculate_loss

    def recorded(interaction):
        loss = calculate_loss(interaction)
        grad_reaches_projector = loss.requires_grad and model.hybrid
        seen.append((model.curriculum_progress, model.hybrid, grad_reaches_projector))
        return loss

    model.calculate_loss = recorded
    trainer.fit(train_data, valid_data=None, saved=False, show_progress=False)
    total = 3 * len(train_data)
    assert [p for p, _, _ in seen] == [k / total for k in range(total)]
    assert seen[0][1] is False  # p = 0: the first batch is text only
    assert any(h for _, h, _ in seen)
    model.eval()
    assert model.hybrid  # evaluation uses hybrid prompts


def test_llara_text_batches_leave_the_projector_alone(baseline_config):
    _, (_, train_data, *_, model, _) = build("LLaRA", baseline_config, scoring="native")
    batch = next(iter(train_data))
    model.train()
    model.curriculum_progress = 0.0
    model.calculate_loss(batch).backward()
    assert not model.hybrid and all(p.grad is None for p in model.projector.parameters())
    model.curriculum_progress = 1.0
    model.calculate_loss(batch).backward()
    assert model.hybrid and all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.projector.parameters())


def test_lora_with_gradient_checkpointing_gives_the_same_gradients(baseline_config):
    """``llm_gradient_checkpointing`` (how a LoRA model with long prompts fits in memory) recomputes the
    layers in backward with the same LoRA dropout masks, so every trained parameter gets the gradient
    of the plain step."""
    grads = {}
    for checkpointing in (False, True):
        _, (_, train_data, *_, model, _) = build("LLaRA", baseline_config, scoring="retrieval", lora_dropout=0.5,
                                                 llm_gradient_checkpointing=checkpointing)
        for name, p in model.named_parameters():  # nonzero B, so the adapters' dropout shows in the gradients
            if "lora_B" in name:
                p.data.normal_(0, 0.5, generator=torch.Generator().manual_seed(sum(map(ord, name))))
        model.train()
        model.curriculum_progress = 1.0
        torch.manual_seed(0)
        model.calculate_loss(next(iter(train_data))).backward()
        grads[checkpointing] = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    assert grads[True].keys() == grads[False].keys() and any("lora_A" in n for n in grads[True])
    for name, grad in grads[False].items():
        assert grad.abs().sum() > 0, name
        assert torch.allclose(grads[True][name], grad, rtol=1e-4, atol=1e-6), name


# properties/model/<name>.yaml: each official code's schedule where it fits on a CPU (the YAML names the deviations)
OFFICIAL_SCHEDULES = {
    "TALLRec": {"learner": "adamw", "weight_decay": 0.0, "learning_rate": 1e-4, "lr_schedule": "linear",
                "lr_warmup_ratio": 0.1, "lr_min_ratio": 0.0, "train_batch_size": 16, "gradient_accumulation_steps": 8,
                "epochs": 10, "train_last_item_only": True},
    "CoLLM": {"learner": "adamw", "weight_decay": 1e-3, "learning_rate": 1e-3, "collm_lora_learning_rate": 1e-3,
              "lr_schedule": "cosine", "lr_warmup_ratio": 0.02, "lr_min_ratio": 0.08, "train_batch_size": 16,
              "gradient_accumulation_steps": 1, "epochs": 10, "collm_lora_epochs": 10},
    "LLaRA": {"learner": "adam", "weight_decay": 0.0, "learning_rate": 8e-4, "lr_schedule": "cosine",
              "lr_warmup_ratio": 0.05, "lr_min_ratio": 0.01, "train_batch_size": 8, "gradient_accumulation_steps": 16,
              "epochs": 5, "train_last_item_only": False, "train_rows_per_user": 2, "stopping_step": 3},
}


@pytest.mark.parametrize("name", MODELS)
def test_official_schedules_load_and_their_trainers_train_with_them(baseline_config, name):
    official = OFFICIAL_SCHEDULES[name]
    own = {key: value for key, value in baseline_config.items() if key not in official}
    config = Config(model=name, config_dict=own)
    assert {key: config[key] for key in official} == official

    # one epoch (per step) of the tiny data with the rest of the YAML's schedule
    _, (_, train_data, valid_data, _, model, trainer) = build(name, own, epochs=1, collm_lora_epochs=1)
    k = official["gradient_accumulation_steps"]
    assert trainer.gradient_accumulation_steps == k
    if name == "LLaRA":
        assert isinstance(train_data, SampledRowsTrainDataLoader) and train_data.rows_per_user == 2
    optimizers, steps = [], []
    build_optimizer = trainer._build_optimizer

    def recorded_build(**kwargs):
        optimizer = build_optimizer(**kwargs)
        step = optimizer.step
        optimizer.step = lambda *args, **kw: steps.append(optimizer.param_groups[0]["lr"]) or step(*args, **kw)
        optimizers.append(optimizer)
        return optimizer

    trainer._build_optimizer = recorded_build
    if name != "CoLLM":  # a staged trainer builds its optimisers in fit
        trainer.optimizer = trainer._build_optimizer()
    before = snapshot(model, True)
    trainer.fit(train_data, valid_data, saved=False)
    learner = torch.optim.AdamW if official["learner"] == "adamw" else torch.optim.Adam
    stages = 2 if name == "CoLLM" else 1
    assert len(optimizers) == stages and all(type(opt) is learner for opt in optimizers)
    assert all(group["weight_decay"] == official["weight_decay"] for opt in optimizers for group in opt.param_groups)
    schedule = trainer.lr_scheduler
    assert isinstance(schedule, StepSchedule) and schedule.optimizer is optimizers[-1]
    assert (schedule.shape, schedule.warmup_ratio, schedule.min_ratio) == (
        official["lr_schedule"], official["lr_warmup_ratio"], official["lr_min_ratio"])
    per_epoch = -(-len(train_data) // k)
    assert schedule.total_steps == per_epoch and len(steps) == stages * per_epoch
    assert schedule.base_lrs == [official["learning_rate"]] and 0 <= max(steps) <= official["learning_rate"]
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before)


def test_llara_native_needs_whole_user_blocks(baseline_config):
    with pytest.raises(ValueError, match="set eval_batch_size to a multiple of 101"):
        build("LLaRA", baseline_config, scoring="native", eval_batch_size=50)
    _, (*_, model, _) = build("LLaRA", baseline_config, scoring="native")
    with pytest.raises(ValueError, match="scoring: retrieval"):
        model.full_sort_predict(None)


@pytest.mark.parametrize("name", ["TALLRec", "CoLLM"])
def test_fit_checkpoints_hold_adapters_and_projectors_only(baseline_config, name):
    _, (dataset, train_data, valid_data, test_data, model, trainer) = build(name, baseline_config, scoring="retrieval")
    trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    checkpoint = load_recbole_checkpoint(trainer.saved_model_file)
    keys = set(checkpoint["state_dict"])
    allowed = HEADS + PROJECTORS[name]
    assert keys and all("lora_" in k or k.split(".")[0] in allowed for k in keys)
    assert keys == {n for n, p in model.named_parameters() if "lora_" in n or n.split(".")[0] in allowed}
    if name == "CoLLM":  # one checkpoint per step; the first holds no mapping
        first = load_recbole_checkpoint(trainer.saved_model_file.replace("-mapping.pth", "-lora.pth"))
        assert trainer.saved_model_file.endswith("-mapping.pth")
        assert not any(k.startswith("mapping.") for k in first["state_dict"])
        lora = [k for k in keys if "lora_" in k]
        assert all(torch.equal(first["state_dict"][k], checkpoint["state_dict"][k]) for k in lora)  # frozen in step 2
    init_seed(2020, True)
    result = trainer.evaluate(test_data, load_best_model=True)
    assert 0.0 <= result["ndcg@10"] <= result["hit@10"] <= 1.0
