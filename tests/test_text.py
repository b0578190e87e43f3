"""Item text from .item files and prompt assembly."""

import os
import shutil

import pytest
import torch

from recbole_llmsrec.config import Config
from recbole_llmsrec.data import create_dataset
from recbole_llmsrec.llm.backbone import LLMBackbone, load_causal_lm
from recbole_llmsrec.llm.text import PromptBuilder, read_item_text, timestamp_list_field

from conftest import DATA_DIR


def make_dataset(tmp_path, item_lines=None, **settings):
    """The tiny dataset copied to tmp_path, optionally with another .item file (None: no file)."""
    folder = tmp_path / "data" / "tiny"
    folder.mkdir(parents=True)
    shutil.copy(os.path.join(DATA_DIR, "tiny", "tiny.inter"), folder)
    if item_lines is not None:
        (folder / "tiny.item").write_text("\n".join(item_lines) + "\n", encoding="utf-8")
    config = Config(model="SASRec", dataset="tiny", config_dict={
        "data_path": str(tmp_path / "data"), "item_text_fields": ["title"],
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]}, "state": "WARNING", **settings})
    return config, create_dataset(config)


def tiny_items(n=150, title=lambda i: f"Film {i}"):
    return ["item_id:token\ttitle:token_seq\tyear:token"] + [f"{i}\t{title(i)}\t19{i % 100:02d}" for i in range(1, n + 1)]


def test_raw_text_with_template_and_non_ascii(tmp_path):
    lines = tiny_items(title=lambda i: "Caf\u00e9 \u6771\u4eac" if i == 7 else f"Film  {i}")
    config, dataset = make_dataset(tmp_path, lines, item_text_fields=["title", "year"], item_text_template="{title} ({year})")
    texts = read_item_text(config, dataset)
    assert len(texts) == dataset.item_num and texts[0] == ""
    internal = dataset.token2id("item_id", "7")
    assert texts[internal] == "Caf\u00e9 \u6771\u4eac (1907)"
    assert texts[dataset.token2id("item_id", "12")] == "Film  12 (1912)"  # raw text, spacing kept


def test_missing_text_uses_the_placeholder_or_fails(tmp_path, caplog):
    lines = tiny_items(title=lambda i: "" if i in (3, 4) else f"Film {i}")[:-10]  # 10 items lack a row
    config, dataset = make_dataset(tmp_path, lines)
    texts = read_item_text(config, dataset)
    assert texts[dataset.token2id("item_id", "3")] == "Empty title"
    assert texts[dataset.token2id("item_id", "150")] == "Empty title"
    assert "item_text_placeholder" in caplog.text
    config["item_text_placeholder"] = None
    with pytest.raises(ValueError, match="have no text"):
        read_item_text(config, dataset)


def test_missing_item_file_or_field_errors_name_the_fix(tmp_path):
    config, dataset = make_dataset(tmp_path, None)
    with pytest.raises(FileNotFoundError, match="item_text_fields"):
        read_item_text(config, dataset)
    (tmp_path / "data" / "tiny" / "tiny.item").write_text("\n".join(tiny_items()), encoding="utf-8")
    config["item_text_fields"] = ["name"]
    with pytest.raises(KeyError, match="set item_text_fields"):
        read_item_text(config, dataset)
    config["item_text_fields"] = None
    with pytest.raises(ValueError, match="properties/dataset/tiny.yaml"):
        read_item_text(config, dataset)


def test_normalised_timestamps_are_refused(tmp_path):
    config, dataset = make_dataset(tmp_path, tiny_items(), normalize_all=True)
    with pytest.raises(ValueError, match="normalize_all: False"):
        timestamp_list_field(config, dataset)


def test_prompts_from_cached_ids(tiny_llm_path):
    backbone = LLMBackbone(*load_causal_lm(tiny_llm_path))
    texts = ["", "Film 1", "Film 2", "A very long title " * 20]
    builder = PromptBuilder(backbone.tokenizer, texts, max_item_tokens=8)
    day = 86400
    ids = builder.user_prompt([1, 3, 2], [0 * day, 1 * day, 40 * day])
    assert ids.count(builder.history_emb_id) == 3 and ids.count(builder.user_out_id) == 1
    assert ids[-1] == builder.user_out_id
    text = backbone.tokenizer.decode(ids)
    assert 'Item No.2, Time: 1970-01-02, "' in text and "1970-02-10" in text and '"Film 2"' in text
    assert len(builder.item_tokens[3]) == 9  # cut to 8 tokens plus the closing quote
    item = builder.item_prompt(2)
    assert item.count(builder.history_emb_id) == 1 and item[-1] == builder.item_out_id
    assert builder.item_prompt(2) is item  # cached
    input_ids, mask = builder.pad([ids, item])
    assert input_ids.shape == (2, len(ids)) and mask[1].sum() == len(item) and mask[0].all()

    seq = torch.tensor([[4, 5, 6, 7, 0, 0], [9, 0, 0, 0, 0, 0]])
    windows, times = builder.history_windows(seq, torch.tensor([4, 1]), 2, seq * 10)
    assert windows == [[6, 7], [9]] and times == [[60, 70], [90]]
