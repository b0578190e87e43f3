"""Item embedding tables initialised from text embeddings (Harte et al., RecSys 2023).

Shared by LLM2SASRec and LLM2BERT4Rec: the item texts are embedded once (cached), reduced to the
model's hidden size with the chosen method fitted on the whole catalogue, optionally rescaled, and
written into the item embedding rows 1..n (row 0, padding, and any extra rows such as BERT4Rec's
mask token keep RecBole's initialisation).
"""

import torch

from recbole_llmsrec.llm.encoder import item_classes, item_text_embeddings, reduce_item_vectors

INIT_SCALES = ("none", "std_match", "unit")


def text_initial_item_embeddings(config, dataset, dim):
    """``[item_num, dim]`` initial item vectors from text (row 0 zero), as configured."""
    vectors = item_text_embeddings(config, dataset)
    classes = item_classes(dataset, config["llm_class_field"]) if config["llm_reduce"] == "lda" else None
    reduced = reduce_item_vectors(vectors, dim, config["llm_reduce"], seed=config["seed"], classes=classes)
    scale = config["llm_init_scale"] or "none"
    if scale == "std_match":  # the spread of RecBole's own N(0, initializer_range) initialisation
        reduced = reduced * (config["initializer_range"] / reduced[1:].std())
    elif scale == "unit":
        reduced = torch.nn.functional.normalize(reduced, dim=-1)
    elif scale != "none":
        raise ValueError(f"llm_init_scale must be one of {INIT_SCALES}, not {scale!r}")
    if config["llm_shuffle_ablation"]:  # the paper's sanity check: same vectors, wrong items
        generator = torch.Generator().manual_seed(config["seed"])
        reduced[1:] = reduced[1:][torch.randperm(len(reduced) - 1, generator=generator)]
    return reduced


def initialise_item_embedding(model, config, dataset):
    """Overwrite ``model.item_embedding`` rows 1..n_items-1 with text vectors; freeze if asked."""
    table = model.item_embedding.weight
    init = text_initial_item_embeddings(config, dataset, table.shape[1])
    with torch.no_grad():
        table[1 : len(init)] = init[1:].to(table.device, table.dtype)
    table.requires_grad_(not config["llm_freeze"])
