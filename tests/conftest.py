"""Shared fixtures: the tiny dataset, a tiny Llama and tokenizer built in code, a tiny config."""

import os

import pytest
import torch

DATA_DIR = os.path.join(os.path.dirname(__file__), "data")


def build_tiny_llm(folder, corpus):
    """Save a randomly initialised 2-layer Llama and a byte-level BPE tokenizer trained on ``corpus``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_tiny_encoder(folder, corpus):
    """Save a randomly initialised 1-layer BERT as a sentence-transformers folder (mean pooling, normalised)."""
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(corpus, trainers.WordPieceTrainer(vocab_size=300, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]")
    torch.manual_seed(1)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    os.makedirs(os.path.join(folder, "1_Pooling"), exist_ok=True)
    with open(os.path.join(folder, "1_Pooling", "config.json"), "w") as f:
        json.dump({"word_embedding_dimension": 24, "pooling_mode_mean_tokens": True}, f)
    with open(os.path.join(folder, "modules.json"), "w") as f:
        json.dump([{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                   {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                   {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}], f)
    return folder


@pytest.fixture(scope="session")
def tiny_encoder_path(tmp_path_factory):
    with open(os.path.join(DATA_DIR, "tiny", "tiny.item"), encoding="utf-8") as f:
        corpus = f.read().splitlines()
    return build_tiny_encoder(str(tmp_path_factory.mktemp("tiny_encoder")), corpus * 5)


@pytest.fixture(scope="session")
def tiny_llm_path(tmp_path_factory):
    from recbole_llmsrec.llm.text import PromptBuilder

    corpus = [PromptBuilder.USER_PREFIX, PromptBuilder.USER_SUFFIX, PromptBuilder.ITEM_PREFIX,
              PromptBuilder.ITEM_SUFFIX, "Item No.1, Time: 1997-12-04, ", '"Film 12",']
    with open(os.path.join(DATA_DIR, "tiny", "tiny.item"), encoding="utf-8") as f:
        corpus += f.read().splitlines()
    return build_tiny_llm(str(tmp_path_factory.mktemp("tiny_llm")), corpus * 5)


@pytest.fixture
def tiny_config_dict(tiny_llm_path, tmp_path, monkeypatch):
    """Settings for a fast LLMSRec run on the tiny dataset (cwd moved to a temp folder for logs)."""
    monkeypatch.chdir(tmp_path)
    return {
        "dataset": "tiny",
        "data_path": DATA_DIR,
        "item_text_fields": ["title"],
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "llm_path": tiny_llm_path,
        "checkpoint_dir": str(tmp_path / "saved"),
        "MAX_ITEM_LIST_LENGTH": 20,
        "proj_dim": 16,
        "mlp_hidden_size": 32,
        "llm_batch_size": 16,
        "train_batch_size": 8,
        "eval_batch_size": 400,
        "epochs": 2,
        "stopping_step": 10,
        "learning_rate": 0.001,
        "show_progress": False,
        "state": "WARNING",
        "teacher_config": {
            "hidden_size": 16, "inner_size": 16, "n_layers": 1, "n_heads": 1,
            "hidden_dropout_prob": 0.1, "attn_dropout_prob": 0.1, "loss_type": "CE",
            "train_neg_sample_args": None, "learning_rate": 0.01, "train_batch_size": 64,
            "epochs": 3, "stopping_step": 3, "eval_step": 1,
        },
    }
