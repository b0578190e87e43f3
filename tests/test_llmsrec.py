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
