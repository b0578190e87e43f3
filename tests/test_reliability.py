"""Reliability: bad input stops a run with an error naming the fix and damages nothing written
before; messy catalogues and long histories work; checkpoints are atomic; a killed run resumes
to the metrics of an uninterrupted one; the same seed gives the same metrics for every model."""

import glob
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from recbole.utils import init_seed

from recbole_llmsrec.compat import atomic_torch_save, load_recbole_checkpoint
from recbole_llmsrec.config import Config
from recbole_llmsrec.quick_start import _build, run_recbole_llmsrec

from conftest import DATA_DIR, build_tiny_llm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def copy_tiny(folder, item_lines=None):
    """The tiny dataset under ``folder/tiny``; ``item_lines`` replace its .item file (None: no file)."""
    target = folder / "tiny"
    target.mkdir(parents=True)
    shutil.copy(os.path.join(DATA_DIR, "tiny", "tiny.inter"), target)
    if item_lines is not None:
        (target / "tiny.item").write_text("\n".join(item_lines) + "\n", encoding="utf-8")
    return str(folder)


def tiny_item_lines(title):
    with open(os.path.join(DATA_DIR, "tiny", "tiny.item"), encoding="utf-8") as f:
        header, *rows = f.read().splitlines()
    lines = [header]
    for row in rows:
        item, _, genre = row.split("\t")
        lines.append(f"{item}\t{title(int(item))}\t{genre}")
    return lines


def snapshot(folder):
    """Every file below ``folder`` with the hash of its bytes."""
    files = {}
    for path in glob.glob(os.path.join(folder, "**", "*"), recursive=True):
        if os.path.isfile(path):
            with open(path, "rb") as f:
                files[os.path.relpath(path, folder)] = hashlib.sha1(f.read()).hexdigest()
    return files


def build(config_dict, **overrides):
    config = Config(model="LLMSRec", config_dict={**config_dict, **overrides})
    init_seed(config["seed"], config["reproducibility"])
    return _build(config)


# ---- bad input ----------------------------------------------------------------------------------


def test_bad_input_stops_the_run_naming_the_fix_and_damages_nothing(tiny_config_dict, tmp_path):
    good = run_recbole_llmsrec(model="LLMSRec", config_dict={**tiny_config_dict, "epochs": 1})
    saved = tiny_config_dict["checkpoint_dir"]
    teacher = glob.glob(os.path.join(saved, "teacher", "SASRec-tiny-*.pth"))[0]
    before = snapshot(saved)

    checkpoint = load_recbole_checkpoint(good["saved_model_file"])
    checkpoint["config"]["dataset"] = "ml-100k"
    torch.save(checkpoint, tmp_path / "other_dataset_run.pth")
    teacher_checkpoint = load_recbole_checkpoint(teacher)
    teacher_checkpoint["config"]["dataset"] = "ml-100k"
    torch.save(teacher_checkpoint, tmp_path / "other_dataset_teacher.pth")
    for name, source in (("partial_teacher.pth", teacher), ("partial_run.pth", good["saved_model_file"])):
        with open(source, "rb") as f:
            (tmp_path / name).write_bytes(f.read()[:3000])
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                         intermediate_size=8)).save_pretrained(tmp_path / "bert")
    short_llm = build_tiny_llm(str(tmp_path / "short_llm"), ["Film 1", "Film 2"] * 5)
    config_file = os.path.join(short_llm, "config.json")
    with open(config_file) as f:
        text = f.read().replace('"max_position_embeddings": 1024', '"max_position_embeddings": 48')
    with open(config_file, "w") as f:
        f.write(text)

    cases = {
        "no .item file": ({"data_path": copy_tiny(tmp_path / "no_item")}, FileNotFoundError, "add the atomic file tiny.item"),
        "no text column": ({"item_text_fields": ["plot"]}, KeyError, "set item_text_fields"),
        "llm_path missing": ({"llm_path": str(tmp_path / "no_llm")}, FileNotFoundError, "set llm_path"),
        "llm_path not a causal LM": ({"llm_path": str(tmp_path / "bert")}, ValueError, "set llm_path to a decoder-only"),
        "prompts beyond the context window": ({"llm_path": short_llm}, ValueError, "lower prompt_history_len"),
        "teacher of another dataset": (
            {"teacher_checkpoint": str(tmp_path / "other_dataset_teacher.pth")}, ValueError, "trained on dataset 'ml-100k'"),
        "partial teacher": ({"teacher_checkpoint": str(tmp_path / "partial_teacher.pth")}, RuntimeError, "corrupt or partial"),
        "resume from a partial file": (
            {"resume_checkpoint": str(tmp_path / "partial_run.pth")}, RuntimeError, "corrupt or partial"),
        "resume from another dataset": (
            {"resume_checkpoint": str(tmp_path / "other_dataset_run.pth")}, ValueError, "leave it empty to start from scratch"),
        "resume from another model": ({"resume_checkpoint": teacher}, ValueError, "written for model 'SASRec'"),
        "quantised without bitsandbytes or GPU": ({"llm_quantization": "4bit"}, (ImportError, ValueError), "bitsandbytes"),
    }
    for case, (overrides, error, fix) in cases.items():
        with pytest.raises(error, match=fix):
            run_recbole_llmsrec(model="LLMSRec", config_dict={**tiny_config_dict, **overrides})
        after = snapshot(saved)
        assert {k: after.get(k) for k in before} == before, f"{case}: files written earlier changed"
        assert not [k for k in after if k not in before and k.endswith(".pth")], f"{case}: left a checkpoint"


def test_missing_item_text_fails_before_the_teacher_is_trained(tiny_config_dict, tmp_path):
    with pytest.raises(FileNotFoundError, match="add the atomic file tiny.item"):
        build(tiny_config_dict, data_path=copy_tiny(tmp_path / "no_item"))
    assert not glob.glob(os.path.join(tiny_config_dict["checkpoint_dir"], "teacher", "*"))


# ---- messy catalogues and long histories --------------------------------------------------------


def test_empty_non_ascii_and_very_long_titles_train_and_evaluate(tiny_config_dict, tmp_path, caplog):
    odd = {3: "", 4: "   ", 5: "Amélie 🎬 «Ça» עב", 6: "東京物語 🎬 " * 500, 7: 'He said "no" \\ \'yes\''}
    data_path = copy_tiny(tmp_path / "messy", tiny_item_lines(lambda i: odd.get(i, f"Film {i}")))
    config_dict = {**tiny_config_dict, "data_path": data_path, "item_text_max_tokens": 40}
    dataset, train_data, valid_data, test_data, model, trainer = build(config_dict)
    assert "2 of" in caplog.text and "Empty title" in caplog.text  # the two blank titles, counted

    def item(token):
        return dataset.token2id("item_id", token)

    tokenizer = model.llm.tokenizer
    assert tokenizer.decode(model.prompts.item_tokens[item("5")]) == f'"{odd[5]}"'  # lossless round trip
    assert tokenizer.decode(model.prompts.item_tokens[item("3")]) == '"Empty title"'
    assert tokenizer.decode(model.prompts.item_tokens[item("7")]) == f'"{odd[7]}"'
    # a very long title is cut to item_text_max_tokens (+ the closing quote), never inside a character
    long_title = model.prompts.item_tokens[item("6")]
    assert 40 - 4 < len(long_title) <= 41
    shown = tokenizer.decode(long_title)
    assert "\ufffd" not in shown and odd[6].startswith(shown[1:-1]) and shown.endswith('"')
    assert max(len(model.prompts.item_prompt(i)) for i in range(1, dataset.item_num)) < 100

    trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    losses = [trainer.train_loss_dict[e] for e in sorted(trainer.train_loss_dict)]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    result = trainer.evaluate(test_data, load_best_model=True)
    assert 0.0 <= result["ndcg@10"] <= result["hit@10"] <= 1.0
    assert torch.isfinite(model.all_item_vectors()).all()


def test_only_the_last_prompt_history_len_items_reach_the_prompt(tiny_config_dict):
    dataset, train_data, *_, model, _ = build(tiny_config_dict, prompt_history_len=3, prompt_show_dates=False)
    batch = next(iter(train_data))
    item_seq, item_seq_len = batch["item_id_list"], batch["item_length"]
    assert int(item_seq_len.max()) > 3 + 5  # histories much longer than the prompt window
    # the same users with only their last three items kept, re-aligned to the left
    last_three = torch.zeros_like(item_seq)
    for row, length in enumerate(item_seq_len.tolist()):
        kept = item_seq[row, max(0, length - 3) : length]
        last_three[row, : len(kept)] = kept
    model.eval()
    with torch.no_grad():
        full = model.user_repr(item_seq, item_seq_len)
        cut = model.user_repr(last_three, item_seq_len.clamp(max=3))
    assert torch.allclose(full, cut, atol=1e-5)
    prompt = model.prompts.user_prompt([int(i) for i in last_three[0, :3] if i])
    assert prompt.count(model.prompts.history_emb_id) == min(3, int(item_seq_len[0]))


# ---- checkpoints and resuming -------------------------------------------------------------------


class FailsWhilePickled:
    def __reduce__(self):
        raise RuntimeError("disk full")


def test_checkpoints_are_written_atomically(tmp_path):
    path = tmp_path / "model.pth"
    atomic_torch_save({"weights": torch.ones(3)}, path)
    with pytest.raises(RuntimeError, match="disk full"):
        atomic_torch_save({"weights": torch.zeros(1000), "extra": FailsWhilePickled()}, path)
    assert torch.equal(load_recbole_checkpoint(path)["weights"], torch.ones(3))  # the earlier file stands
    assert os.listdir(tmp_path) == ["model.pth"]  # no temporary file left behind


def test_resumed_recbole_model_matches_an_uninterrupted_run(tiny_config_dict, tmp_path):
    keys = ("dataset", "data_path", "load_col", "MAX_ITEM_LIST_LENGTH", "show_progress", "state")
    sasrec = {**{k: tiny_config_dict[k] for k in keys}, "hidden_size": 16, "inner_size": 16, "n_layers": 1,
              "n_heads": 1, "stopping_step": 10}
    whole = run_recbole_llmsrec(model="SASRec", config_dict={**sasrec, "epochs": 5, "checkpoint_dir": str(tmp_path / "a")})
    # a run stopped after two epochs, then resumed for the rest
    first = run_recbole_llmsrec(model="SASRec", config_dict={**sasrec, "epochs": 2, "checkpoint_dir": str(tmp_path / "b")})
    resumed = run_recbole_llmsrec(model="SASRec", config_dict={
        **sasrec, "epochs": 5, "checkpoint_dir": str(tmp_path / "b"), "resume_checkpoint": first["saved_model_file"]})
    assert resumed["saved_model_file"] == first["saved_model_file"]
    assert resumed["best_valid_result"] == whole["best_valid_result"]
    assert resumed["test_result"] == whole["test_result"]


def test_killed_run_resumes_to_the_same_metrics(tiny_config_dict, tmp_path):
    settings = {**tiny_config_dict, "epochs": 4}
    whole = run_recbole_llmsrec(model="LLMSRec", config_dict=settings)
    teacher = glob.glob(os.path.join(settings["checkpoint_dir"], "teacher", "SASRec-tiny-*.pth"))[0]

    killed_dir = tmp_path / "killed"
    settings = {**settings, "checkpoint_dir": str(killed_dir), "teacher_checkpoint": teacher}
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump(settings))
    process = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "run_recbole_llmsrec.py"), "--model=LLMSRec", "--dataset=tiny",
         f"--config_files={config_file}"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300

    def best_checkpoints():  # the latest checkpoint written after each validation aside
        return [path for path in glob.glob(str(killed_dir / "LLMSRec-*.pth")) if not path.endswith("-latest.pth")]

    while process.poll() is None and not best_checkpoints() and time.time() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)  # as soon as the first checkpoint is there
    _, stderr = process.communicate()
    assert process.returncode == -signal.SIGKILL, f"the run ended before it was killed: {stderr.decode()[-2000:]}"

    (checkpoint_file,) = best_checkpoints()
    checkpoint = load_recbole_checkpoint(checkpoint_file)  # whole, although the process died
    assert checkpoint["epoch"] < settings["epochs"] - 1 and "rng_state" in checkpoint

    resumed = run_recbole_llmsrec(model="LLMSRec", config_dict={**settings, "resume_checkpoint": checkpoint_file})
    assert resumed["best_valid_result"] == whole["best_valid_result"]
    assert resumed["test_result"] == whole["test_result"]


# ---- the same seed, the same metrics ------------------------------------------------------------


@pytest.mark.parametrize("model", ["LLM2SASRec", "LLM2BERT4Rec", "LLMSeqSim", "LLMSeqPrompt"])
def test_same_seed_same_metrics(tiny_config_dict, tiny_encoder_path, model):
    settings = {**tiny_config_dict, "text_encoder_path": tiny_encoder_path, "epochs": 2, "hidden_size": 16,
                "inner_size": 16, "n_layers": 1, "n_heads": 1, "llm_reduce": "pca", "prompt_history_len": 5,
                "llmseqprompt_num_samples": 2, "llmseqprompt_max_new_tokens": 4, "llm_batch_size": 64, "llmseqsim_dim": 8,
                "train_batch_size": 32, "eval_batch_size": 6000}
    if model == "LLMSeqPrompt":
        settings["epochs"] = 1
    first = run_recbole_llmsrec(model=model, config_dict=settings)
    second = run_recbole_llmsrec(model=model, config_dict=settings)
    assert first["test_result"] == second["test_result"]
    assert first["best_valid_result"] == second["best_valid_result"]
    assert 0.0 < first["test_result"]["hit@20"] <= 1.0


# ---- large LLMs ---------------------------------------------------------------------------------


def test_gradient_checkpointing_recomputes_in_backward_with_the_same_gradients(tiny_llm_path, monkeypatch):
    from transformers.models.llama import modeling_llama

    from recbole_llmsrec.llm.backbone import LLMBackbone, load_causal_lm

    mlp_calls = []
    mlp_forward = modeling_llama.LlamaMLP.forward
    monkeypatch.setattr(modeling_llama.LlamaMLP, "forward", lambda self, x: mlp_calls.append(1) or mlp_forward(self, x))
    torch.manual_seed(0)
    ids = torch.randint(5, 100, (3, 12))
    mask = torch.ones_like(ids)
    mask[2, 8:] = 0
    grads, calls = [], []
    for checkpointing in (False, True):
        backbone = LLMBackbone(*load_causal_lm(tiny_llm_path), gradient_checkpointing=checkpointing)
        backbone.train()  # the recommender trains; the LLM keeps its dropout off
        assert not any(m.training for m in backbone.model.modules() if "Dropout" in type(m).__name__)
        mlp_calls.clear()
        inputs = backbone.model.get_input_embeddings()(ids).detach().requires_grad_(True)
        hidden = backbone.model.get_decoder()(inputs_embeds=inputs, attention_mask=mask).last_hidden_state
        (hidden * torch.arange(hidden.shape[-1])).sum().backward()
        grads.append(inputs.grad)
        calls.append(len(mlp_calls))
    assert calls == [2, 4]  # two layers; with checkpointing each runs again in backward
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


# ---- less work, same result ---------------------------------------------------------------------


def test_length_groups_and_prefix_cache_change_no_result(tiny_config_dict):
    from recbole_llmsrec.llm.backbone import length_groups

    assert length_groups([5, 30, 6, 31], 10) == [[0, 2], [1, 3]]
    assert length_groups([5, 30, 6, 31], 100) == [[0, 2, 1, 3]]  # splitting saves 50 < 100 padded tokens
    assert length_groups([5, 30, 6, 31], 0) == [[0], [2], [1], [3]]
    assert length_groups([5, 30, 6, 31], None) == [[0, 2, 1, 3]]

    dataset, train_data, *_, model, _ = build({**tiny_config_dict, "llm_head_cache": False})  # the whole-prompt path (the head cache has its own test)
    batch = next(iter(train_data))
    llm = model.llm
    widths = []
    llm.model.get_decoder().register_forward_pre_hook(
        lambda _, args, kwargs: widths.append(kwargs["inputs_embeds"].shape[:2]), with_kwargs=True)
    results = {}
    for group_cost, prefix_cache in ((None, False), (0, True)):
        llm.group_cost, llm.prefix_cache = group_cost, prefix_cache
        widths.clear()
        model.zero_grad()
        torch.manual_seed(0)  # the same sampled negatives
        sum(model.calculate_loss(batch)).backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
        with torch.no_grad():
            users = model.user_repr(batch["item_id_list"], batch["item_length"], batch["timestamp_list"])
        results[prefix_cache] = (grads, users, list(widths))
    (plain_grads, plain_users, plain_widths), (fast_grads, fast_users, fast_widths) = results[False], results[True]
    assert torch.allclose(plain_users, fast_users, atol=1e-5)
    for name, grad in plain_grads.items():
        assert torch.allclose(grad, fast_grads[name], atol=1e-5, rtol=1e-4), name
    # fewer padded tokens went through the LLM: more, shorter calls, each without the shared opening
    assert sum(r * w for r, w in fast_widths) < 0.9 * sum(r * w for r, w in plain_widths)
    assert len(fast_widths) > len(plain_widths)


def test_no_prefix_cache_while_the_llm_trains_or_recomputes(tiny_llm_path):
    from recbole_llmsrec.llm.backbone import LLMBackbone, load_causal_lm

    ids = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 7, 10, 11]])
    lengths = torch.tensor([5, 5])
    frozen = LLMBackbone(*load_causal_lm(tiny_llm_path), prefix_cache=True)
    assert frozen._shared_prefix(ids, lengths, {}) == 3
    assert frozen._shared_prefix(ids, lengths, {7: None}) == 2  # a soft token is never cached
    checkpointing = LLMBackbone(*load_causal_lm(tiny_llm_path), gradient_checkpointing=True, prefix_cache=True)
    assert checkpointing._shared_prefix(ids, lengths, {}) == 0
    frozen.model.get_input_embeddings().weight.requires_grad_(True)  # e.g. LoRA adapters or a trained LLM
    assert frozen._shared_prefix(ids, lengths, {}) == 0


def test_recbole_leaves_autograd_anomaly_mode_off(tiny_config_dict):
    # RecBole's sine.py switches anomaly mode on when any RecBole sequential model is imported;
    # it checks every gradient for NaN and made a training step about 1.6x slower
    import recbole.model.sequential_recommender.sine  # noqa: F401

    build(tiny_config_dict)
    assert not torch.is_anomaly_enabled()


def test_quantised_loading_settings(monkeypatch):
    import importlib.util

    from recbole_llmsrec.llm import backbone

    assert backbone.quantization_config(None, "float32", "cpu") is None
    with pytest.raises(ValueError, match="llm_quantization must be one of"):
        backbone.quantization_config("3bit", "float32", "cuda")
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "bitsandbytes" else find_spec(name, *a))
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        backbone.quantization_config("4bit", "float32", "cpu")
    four = backbone.quantization_config("4bit", "float32", "cuda")
    assert four.load_in_4bit and four.bnb_4bit_quant_type == "nf4" and four.bnb_4bit_compute_dtype == torch.bfloat16
    assert backbone.quantization_config("4bit", "float16", "cuda:1").bnb_4bit_compute_dtype == torch.float16
    assert backbone.quantization_config("8bit", "bfloat16", "cuda").load_in_8bit
