"""LLMSRec end to end on the tiny dataset with a tiny Llama: train, validate, test, reload."""

import glob
import os

import pytest
import torch
from recbole.utils import init_seed

from recbole_llmsrec.compat import load_recbole_checkpoint
from recbole_llmsrec.config import Config
from recbole_llmsrec.quick_start import _build, run_recbole_llmsrec

METRICS = ("ndcg@10", "ndcg@20", "hit@10", "hit@20")


def eval_args(mode):
    return {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": {"valid": mode, "test": mode}}


def build(config_dict, **overrides):
    config = Config(model="LLMSRec", config_dict={**config_dict, **overrides})
    init_seed(config["seed"], config["reproducibility"])
    return config, _build(config)


def assert_valid_metrics(result):
    assert set(METRICS) <= set(result)
    for name in METRICS:
        assert 0.0 <= result[name] <= 1.0
    assert result["ndcg@10"] <= result["ndcg@20"] and result["hit@10"] <= result["hit@20"]
    assert result["ndcg@10"] <= result["hit@10"]


@pytest.mark.parametrize("mode", ["uni100", "full"])
def test_train_validate_test(tiny_config_dict, mode):
    config, (dataset, train_data, valid_data, test_data, model, trainer) = build(
        tiny_config_dict, epochs=6, eval_args=eval_args(mode))
    # one training row per user, and only the projectors and the two tokens train
    assert len(train_data._dataset) == dataset.user_num - 1
    trainable = {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"item_proj", "user_head", "item_head", "teacher_user_head", "user_out_token", "item_out_token"}
    frozen_before = model.llm.model.get_input_embeddings().weight.clone()

    trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    losses = [trainer.train_loss_dict[e] for e in sorted(trainer.train_loss_dict)]
    assert losses[-1] < losses[0]
    assert torch.equal(model.llm.model.get_input_embeddings().weight, frozen_before)

    init_seed(config["seed"], True)  # uni100 draws its negatives while iterating
    result = trainer.evaluate(test_data, load_best_model=True)
    assert_valid_metrics(result)

    # the checkpoint holds the trained parameters only, and reloading reproduces the test metrics
    checkpoint = load_recbole_checkpoint(trainer.saved_model_file)
    assert set(checkpoint["state_dict"]) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(not k.startswith(("llm.", "teacher.")) for k in checkpoint["state_dict"])
    _, (_, _, _, test_again, model_again, trainer_again) = build(tiny_config_dict, eval_args=eval_args(mode))
    init_seed(config["seed"], True)
    assert trainer_again.evaluate(test_again, load_best_model=True, model_file=trainer.saved_model_file) == result


def test_item_vectors_are_computed_once_per_parameter_state(tiny_config_dict):
    config, (dataset, train_data, valid_data, test_data, model, trainer) = build(tiny_config_dict)
    calls = []
    original = model.item_repr
    model.item_repr = lambda items: calls.append(len(items)) or original(items)
    trainer.evaluate(valid_data, load_best_model=False)
    trainer.evaluate(test_data, load_best_model=False)
    assert sum(calls) == dataset.item_num - 1  # every item once, shared by both evaluations
    model.train()
    model.eval()
    trainer.evaluate(test_data, load_best_model=False)
    assert sum(calls) == 2 * (dataset.item_num - 1)


def test_predict_agrees_with_full_sort(tiny_config_dict):
    config, (dataset, train_data, valid_data, test_data, model, trainer) = build(tiny_config_dict)
    model.eval()
    batch = next(iter(train_data))
    with torch.no_grad():
        full = model.full_sort_predict(batch)
        picked = model.predict(batch)
    assert full.shape == (len(batch), dataset.item_num)
    assert torch.allclose(picked, full[torch.arange(len(batch)), batch["item_id"]], atol=1e-5)


def test_same_seed_same_metrics_and_teacher_is_cached(tiny_config_dict, caplog):
    first = run_recbole_llmsrec(model="LLMSRec", config_dict=tiny_config_dict)
    teachers = glob.glob(os.path.join(tiny_config_dict["checkpoint_dir"], "teacher", "SASRec-tiny-*.pth"))
    assert len(teachers) == 1
    mtime = os.path.getmtime(teachers[0])
    second = run_recbole_llmsrec(model="LLMSRec", config_dict=tiny_config_dict)
    assert os.path.getmtime(teachers[0]) == mtime
    assert first["test_result"] == second["test_result"]
    assert first["best_valid_result"] == second["best_valid_result"]
    assert_valid_metrics(first["test_result"])


def test_teacher_checkpoint_from_elsewhere_is_refused(tiny_config_dict, tmp_path):
    run_recbole_llmsrec(model="LLMSRec", config_dict={**tiny_config_dict, "epochs": 1})
    teacher = glob.glob(os.path.join(tiny_config_dict["checkpoint_dir"], "teacher", "SASRec-tiny-*.pth"))[0]
    checkpoint = load_recbole_checkpoint(teacher)

    other = dict(checkpoint, config=checkpoint["config"])
    other["config"]["dataset"] = "ml-100k"
    torch.save(other, tmp_path / "other_dataset.pth")
    with pytest.raises(ValueError, match="trained on dataset 'ml-100k'"):
        build(tiny_config_dict, teacher_checkpoint=str(tmp_path / "other_dataset.pth"))

    checkpoint = load_recbole_checkpoint(teacher)
    state = dict(checkpoint["state_dict"])
    state["item_embedding.weight"] = torch.zeros(10, state["item_embedding.weight"].shape[1])
    torch.save(dict(checkpoint, state_dict=state), tmp_path / "other_items.pth")
    with pytest.raises(ValueError, match="knows 10 item ids"):
        build(tiny_config_dict, teacher_checkpoint=str(tmp_path / "other_items.pth"))

    with open(teacher, "rb") as f:
        head = f.read(2000)
    (tmp_path / "partial.pth").write_bytes(head)
    with pytest.raises(RuntimeError, match="corrupt or partial"):
        build(tiny_config_dict, teacher_checkpoint=str(tmp_path / "partial.pth"))
    with pytest.raises(FileNotFoundError, match="teacher_checkpoint"):
        build(tiny_config_dict, teacher_checkpoint=str(tmp_path / "missing.pth"))


def test_teacher_stays_in_eval_mode(tiny_config_dict):
    _, (_, train_data, _, _, model, _) = build(tiny_config_dict)
    model.train()
    assert not model.teacher.training and not model.llm.model.training
    assert not any(p.requires_grad for p in model.teacher.parameters())


def test_bypass_llm_scores_through_the_heads_without_the_llm(tiny_config_dict, monkeypatch):
    """The sanity bound: f_user/f_item over the teacher's lifted states train and rank, and the LLM never runs."""
    config, (_, train_data, valid_data, test_data, model, trainer) = build(
        tiny_config_dict, llmsrec_bypass_llm=True, epochs=8)

    def no_llm(*args, **kwargs):
        raise AssertionError("the LLM ran although llmsrec_bypass_llm is set")

    monkeypatch.setattr(model.llm, "encode_prompts", no_llm)
    trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    losses = [trainer.train_loss_dict[e] for e in sorted(trainer.train_loss_dict)]
    assert losses[-1] < losses[0]
    init_seed(config["seed"], True)
    assert_valid_metrics(trainer.evaluate(test_data, load_best_model=True))


# ---- llmsrec_readout_norm: the read-outs centred with running statistics before the heads ------


def test_running_norm_statistics():
    from recbole_llmsrec.model.layers import RunningNorm

    norm = RunningNorm(3, momentum=0.25)
    x = torch.randn(5, 3) + 10
    with torch.no_grad():
        assert torch.equal(norm(x), x)  # no statistics yet: the identity
    batches = [torch.randn(4, 3) + 10 for _ in range(6)]
    for batch in batches:
        out = norm(batch)  # training, with grad: the batch is folded in first, then subtracted
        assert torch.allclose(out, batch - norm.running_mean)
    # a cumulative average over the first 1 / momentum batches, then an exponential one
    expected = torch.stack([b.mean(0) for b in batches[:4]]).mean(0)
    for batch in batches[4:]:
        expected = 0.75 * expected + 0.25 * batch.mean(0)
    assert int(norm.count) == 6 and torch.allclose(norm.running_mean, expected)
    before = norm.running_mean.clone()
    with torch.no_grad():
        norm(x)  # no gradient: nothing folded in
    norm(x[:1])  # a batch of one says nothing about the spread: nothing folded in
    norm.eval()
    assert torch.equal(norm(x), norm(x)) and torch.equal(norm(x), x - before)
    assert torch.equal(norm.running_mean, before) and int(norm.count) == 6

    standard = RunningNorm(3, scale=True)
    standard(torch.randn(4000, 3) * torch.tensor([1.0, 10.0, 100.0]) + 5)
    standard.eval()
    out = standard(torch.randn(4000, 3) * torch.tensor([1.0, 10.0, 100.0]) + 5)
    assert out.mean(0).abs().max() < 0.1 and (out.std(0) - 1).abs().max() < 0.1


def _scores(model, batch):
    model.eval()
    with torch.no_grad():
        return model.full_sort_predict(batch)


def test_readout_norm_is_off_by_default_and_changes_nothing(tiny_config_dict):
    config, (_, train_data, _, _, model, _) = build(tiny_config_dict)
    assert config["llmsrec_readout_norm"] == "none"
    assert not any("readout_norm" in name for name, _ in model.named_modules()) and model.other_parameter() == {}
    batch = next(iter(train_data))
    scores = _scores(model, batch)
    with torch.no_grad():  # the paper's scoring: f_user(h_U) . f_item(h_I), the read-outs untouched
        users = model.user_head(model.user_repr(batch["item_id_list"], batch["item_length"], batch["timestamp_list"]))
        items = model.item_head(model.item_repr(torch.arange(1, model.n_items)))
    assert torch.allclose(scores[:, 1:], users @ items.T, atol=1e-5)

    # a configuration without the key at all builds the same model
    bare = Config(model="LLMSRec", config_dict=tiny_config_dict)
    del bare.final_config_dict["llmsrec_readout_norm"]
    init_seed(bare["seed"], bare["reproducibility"])
    _, _, _, _, bare_model, _ = _build(bare)
    assert torch.equal(_scores(bare_model, batch), scores)

    with pytest.raises(ValueError, match="llmsrec_readout_norm must be one of none, center, standardize"):
        build(tiny_config_dict, llmsrec_readout_norm="centre")


def test_readout_centring_trains_evaluates_and_reloads(tiny_config_dict):
    config, (_, train_data, valid_data, test_data, model, trainer) = build(
        tiny_config_dict, llmsrec_readout_norm="center", epochs=2)
    batch = next(iter(train_data))
    user_norm, item_norm = model.user_readout_norm, model.item_readout_norm

    # training steps fold their read-outs into the statistics; the losses go down as without
    trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    steps = 2 * len(train_data)
    assert int(user_norm.count) == steps and int(item_norm.count) == steps
    assert user_norm.running_mean.norm() > 0 and item_norm.running_mean.norm() > 0

    # eval: the heads see h - running mean, deterministically, and nothing moves the statistics
    model.eval()
    stats = (user_norm.running_mean.clone(), item_norm.running_mean.clone())
    with torch.no_grad():
        h_u = model.user_repr(batch["item_id_list"], batch["item_length"], batch["timestamp_list"])
        h_i = model.item_repr(torch.arange(1, model.n_items))
        assert torch.equal(model.project_user(h_u), model.user_head(h_u - stats[0]))
        assert torch.equal(model.project_user(h_u), model.project_user(h_u))
    # the common component is gone: the users' mean read-out is far shorter than before centring
    assert (h_u - stats[0]).mean(0).norm() < 0.25 * h_u.mean(0).norm()
    assert (h_i - stats[1]).mean(0).norm() < 0.25 * h_i.mean(0).norm()
    # the evaluation cache is built with the running mean, and building it moves nothing
    model.clear_cache()
    cached = model.all_item_vectors()
    assert torch.allclose(cached[1:], model.item_head(h_i - stats[1]), atol=1e-5)
    scores = _scores(model, batch)
    assert torch.equal(user_norm.running_mean, stats[0]) and torch.equal(item_norm.running_mean, stats[1])
    assert int(user_norm.count) == steps

    # train mode: a step with a gradient moves the statistics, one under no_grad does not
    model.train()
    with torch.no_grad():
        model.calculate_loss(batch)
    assert int(user_norm.count) == steps
    model.calculate_loss(batch)
    assert int(user_norm.count) == steps + 1 and not torch.equal(user_norm.running_mean, stats[0])

    # the checkpoint carries the statistics; reloading restores them and the scores
    checkpoint = load_recbole_checkpoint(trainer.saved_model_file)
    saved = checkpoint["other_parameter"]["llmsrec_readout_norm"]
    assert saved["mode"] == "center" and int(saved["user"]["count"]) > 0
    assert not any("readout_norm" in name for name in checkpoint["state_dict"])
    trainer.load_model_checkpoint(trainer.saved_model_file)
    assert torch.equal(user_norm.running_mean, saved["user"]["running_mean"])
    scores = _scores(model, batch)
    _, (_, _, _, _, model_again, trainer_again) = build(tiny_config_dict, llmsrec_readout_norm="center")
    trainer_again.load_model_checkpoint(trainer.saved_model_file)
    assert torch.equal(model_again.user_readout_norm.running_mean, saved["user"]["running_mean"])
    assert torch.equal(model_again.item_readout_norm.running_mean, saved["item"]["running_mean"])
    assert torch.equal(_scores(model_again, batch), scores)
    init_seed(config["seed"], True)
    result = trainer.evaluate(test_data, load_best_model=True)
    init_seed(config["seed"], True)
    assert trainer_again.evaluate(test_data, load_best_model=True, model_file=trainer.saved_model_file) == result

    # a checkpoint of the other setting is refused with the fix, either way round
    _, (_, _, _, _, _, plain_trainer) = build(tiny_config_dict)
    with pytest.raises(ValueError, match="llmsrec_readout_norm: center.*--llmsrec_readout_norm=center"):
        plain_trainer.load_model_checkpoint(trainer.saved_model_file)
    plain_trainer.fit(train_data, None, saved=True, show_progress=False)
    plain_trainer.load_model_checkpoint(plain_trainer.saved_model_file)  # without centring: loads as before
    with pytest.raises(ValueError, match="llmsrec_readout_norm: none.*--llmsrec_readout_norm=none"):
        trainer_again.load_model_checkpoint(plain_trainer.saved_model_file)
