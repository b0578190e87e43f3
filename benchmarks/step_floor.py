"""LLMSRec's step cost against its floor: the frozen LLM's own forward and backward over the same tokens.

The LLM is frozen, so a training step can cost no less than one forward and one backward pass of the
LLM over the step's prompts (the gradient must reach the soft tokens in the input). Everything else
(RecBole's data loading, prompt building, injection, the MLPs, the teacher, sampling, the
optimiser) is overhead. This script builds LLMSRec once and, on real training batches, times side
by side, interleaved, repeated, medians:

  (a) a full training step: ``calculate_loss`` + backward + optimiser step, as RecBole's trainer
      runs it (plus RecBole's loader time per batch, measured over one epoch of the loader);
  (b) the floor: for exactly the padded token batches that step gave the LLM (user prompts and
      item prompts), ``inputs_embeds`` requiring grad, decoder forward, one backward.

and the evaluation counterpart: all item vectors and the user vectors of ``--eval_users`` users
(``model.all_item_vectors`` / ``model.user_vectors``) against bare no-grad forwards over the same
prompts. Reports (a)/(b), tokens per second (real and padded tokens) and the padding share, for
ways of running the step on the same batches and sampled negatives: ``anomaly`` (as every run was
while RecBole left autograd's anomaly mode on), ``plain`` (one padded batch per LLM call, every
token computed: before length groups and the prefix cache) and ``default`` (the configuration:
``llm_group_cost``, ``llm_prefix_cache``). The floor is always the plain padded batch the model
handed its LLM, without anomaly mode, so (a)/(b) below 1 means work was saved.

    python benchmarks/step_floor.py --dataset=ml-100k --llm_path=smollm2-135m --steps=3 --repeats=3

Writes ``benchmarks/results/step_floor_<dataset>.json``.
"""

import contextlib
import json
import os
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import REPO, parser, report_head, report_path, start, write_report  # noqa: E402


def sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device):
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class LLMCalls:
    """Records the prompts a model hands its LLM (``model.llm.encode_prompts``), as the padded
    token batches of whole prompts (what the floor runs, whatever part the model really computes),
    and the time spent in those calls, while active."""

    def __init__(self, model):
        self.model = model
        self.batches = []
        self.forward_seconds = 0.0

    @contextlib.contextmanager
    def recording(self):
        llm = self.model.llm
        encode_prompts = llm.encode_prompts
        device = self.model.user_out_token.device

        def recorded(prompts, soft_tokens, to_device):
            self.batches.append(llm.pad(prompts, to_device))
            sync(device)
            start = time.perf_counter()
            result = encode_prompts(prompts, soft_tokens, to_device)
            sync(device)
            self.forward_seconds += time.perf_counter() - start
            return result

        llm.encode_prompts = recorded
        try:
            yield self
        finally:
            del llm.encode_prompts  # back to the class's method

    def take(self):
        batches, seconds = self.batches, self.forward_seconds
        self.batches, self.forward_seconds = [], 0.0
        return batches, seconds


def release_memory(device):
    """Hand freed memory back before the next measurement, so that one pass's peak does not add to
    the next one's (glibc keeps large freed blocks on its heap)."""
    import gc

    gc.collect()
    if device.type == "cpu" and sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)


def timed_train_step(model, optimizer, batch, device):
    """Seconds of one training step as RecBole's trainer runs it: loss, backward, optimiser step."""
    interaction = batch.to(device)
    sync(device)
    start = time.perf_counter()
    optimizer.zero_grad()
    loss = sum(model.calculate_loss(interaction))
    loss.backward()
    optimizer.step()
    sync(device)
    seconds = time.perf_counter() - start
    del loss
    release_memory(device)
    return seconds


def token_counts(batches):
    real = sum(int(mask.sum()) for _, mask in batches)
    padded = sum(mask.numel() for _, mask in batches)
    return real, padded


def bare_pass(llm, batches, backward):
    """The floor: the frozen decoder over ``batches``; with ``backward``, gradients into the inputs."""
    import torch

    embedding, decoder = llm.model.get_input_embeddings(), llm.model.get_decoder()
    with torch.set_grad_enabled(backward):
        total = 0.0
        for input_ids, attention_mask in batches:
            embeds = embedding(input_ids).detach().requires_grad_(backward)
            hidden = decoder(inputs_embeds=embeds, attention_mask=attention_mask).last_hidden_state
            total = total + hidden.float().sum()
        if backward:
            total.backward()


def build_llmsrec(config_dict):
    """LLMSRec and its RecBole data and trainer, as ``run_recbole_llmsrec`` builds them."""
    from recbole.utils import init_logger, init_seed

    from recbole_llmsrec.config import Config
    from recbole_llmsrec.quick_start import _build

    config = Config(model="LLMSRec", config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    return config, _build(config)


def quick_teacher(common, teacher_checkpoint):
    """Step cost does not depend on the teacher's quality: without a checkpoint, a one-epoch teacher."""
    if teacher_checkpoint:
        return {"teacher_checkpoint": os.path.join(REPO, teacher_checkpoint)}
    from recbole_llmsrec.config import Config

    teacher = dict(Config(model="LLMSRec", config_dict=common)["teacher_config"])
    return {"teacher_config": {**teacher, "epochs": 1}}


def summary(seconds, real, padded):
    """Median seconds and throughput over measurements of ``real`` / ``padded`` tokens each (lists)."""
    return {"seconds_median": statistics.median(seconds), "seconds_all": seconds,
            "real_tokens": sum(real) / len(real), "padded_tokens": sum(padded) / len(padded),
            "real_tokens_per_s": sum(real) / sum(seconds), "padded_tokens_per_s": sum(padded) / sum(seconds)}


# How the LLM calls run. "plain": one padded float32 batch per call, every token computed (before
# length groups and the caches); "default": the configuration (llm_group_cost, llm_prefix_cache,
# llm_head_cache, llm_compute_dtype); "no_head_cache" and "no_bf16": the default without one of the
# two savings; "bf16": the default with bfloat16 compute forced on (also where it is slow) and
# "bf16_no_head_cache" with the head cache off; "anomaly": plain under autograd's anomaly mode, as
# every run was while RecBole's sine.py left it on (see compat.py).
VARIANTS = ("anomaly", "plain", "default", "no_head_cache", "no_bf16", "bf16", "bf16_no_head_cache")


def variant_settings(config, name):
    """The backbone attributes of a variant: group_cost, prefix_cache, head_cache (on/off),
    compute_dtype (a dtype name or None) and anomaly_mode."""
    from recbole_llmsrec.llm.backbone import resolve_compute_dtype

    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}: one of {', '.join(VARIANTS)}")
    if name in ("plain", "anomaly"):
        return {"group_cost": None, "prefix_cache": False, "head_cache": False, "compute_dtype": None,
                "anomaly_mode": name == "anomaly"}
    default_dtype = resolve_compute_dtype(config["llm_compute_dtype"], config["device"], _weights_dtype(config))
    settings = {"group_cost": config["llm_group_cost"], "prefix_cache": config["llm_prefix_cache"],
                "head_cache": bool(config["llm_head_cache"]),
                "compute_dtype": None if default_dtype is None else str(default_dtype).replace("torch.", ""),
                "anomaly_mode": False}
    if name in ("no_head_cache", "bf16_no_head_cache"):
        settings["head_cache"] = False
    if name == "no_bf16":
        settings["compute_dtype"] = None
    if name.startswith("bf16"):
        settings["compute_dtype"] = "bfloat16"
    return settings


def _weights_dtype(config):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(config["llm_dtype"], torch.float32)


_HEAD_CACHES = {}  # one cache per compute dtype, kept across repeats (the steady state of a long run)


def use_variant(model, config, name):
    import torch

    from recbole_llmsrec.llm.cache import PromptHeadCache

    settings = variant_settings(config, name)
    torch.autograd.set_detect_anomaly(settings.pop("anomaly_mode"))
    dtype = settings.pop("compute_dtype")
    model.llm.compute_dtype = getattr(torch, dtype) if dtype else None
    use_cache = settings.pop("head_cache")
    model.llm.head_cache = _HEAD_CACHES.setdefault(dtype, PromptHeadCache(config["llm_head_cache_mb"])) if use_cache else None
    for key, value in settings.items():
        setattr(model.llm, key, value)


def user_vectors_of(model, valid_data, eval_users, device):
    """The user vectors of the first ``eval_users`` users of ``valid_data`` (0: all), in whole
    batches; returns how many users that was."""
    seen = set()
    for batch in valid_data:
        interaction = batch[0].to(device)
        model.user_vectors(interaction)
        seen.update(interaction[model.USER_ID].tolist())
        if eval_users and len(seen) >= eval_users:
            break
    return len(seen)


def fill_head_cache(model, config, valid_data, variants, device, eval_users=0):
    """One untimed evaluation pass per cached variant (every item, the first ``eval_users`` users;
    0: all): their heads are then kept, as from a long run's second epoch on. Returns the cache's
    size per compute dtype."""
    import torch

    model.eval()
    for name in variants:
        if name in ("plain", "anomaly") or not variant_settings(config, name)["head_cache"]:
            continue
        use_variant(model, config, name)
        model.clear_cache()
        with torch.no_grad():
            model.all_item_vectors()
            user_vectors_of(model, valid_data, eval_users, device)
    model.clear_cache()
    return {str(dtype): {"heads": len(cache), "mb": cache.bytes / 2**20} for dtype, cache in _HEAD_CACHES.items()}


def floor_of_recorded(calls, model, run, backward, device):
    """Time the floor over the token batches ``calls`` recorded; add it and their token counts to
    ``run``; return the seconds the recorded LLM forwards took."""
    token_batches, forward_seconds = calls.take()
    real, padded = token_counts(token_batches)
    run["real"].append(real)
    run["padded"].append(padded)
    import torch

    start = time.perf_counter()
    with torch.autograd.set_detect_anomaly(False):  # the floor is always the bare LLM
        bare_pass(model.llm, token_batches, backward=backward)
        sync(device)
    run["floor"].append(time.perf_counter() - start)
    return forward_seconds


def compare(full, floor, real, padded):
    ratios = [a / b for a, b in zip(full, floor)]
    return {"full": summary(full, real, padded), "floor": summary(floor, real, padded),
            "ratio_median": statistics.median(ratios), "ratio_all": ratios,
            "ratio_of_sums": sum(full) / sum(floor), "padding_share": 1 - sum(real) / sum(padded)}


def time_training(model, trainer, config, train_data, steps, repeats, variants, device):
    """(a) full steps and (b) floors on ``steps`` real batches, ``repeats`` times each, every variant
    on the same batch with the same sampled negatives, interleaved."""
    import torch

    calls = LLMCalls(model)
    batches = []
    for batch in train_data:
        batches.append(batch)
        if len(batches) == steps:
            break
    runs = {name: {"full": [], "floor": [], "llm_forward": [], "real": [], "padded": []} for name in variants}
    model.train()
    for name in variants:  # the head cache holds these batches' heads, as in a long run's later epochs
        if variant_settings(config, name)["head_cache"]:
            use_variant(model, config, name)
            for index, batch in enumerate(batches):
                torch.manual_seed(index)
                with torch.no_grad():
                    model.calculate_loss(batch.to(device))
    for repeat in range(repeats):
        for index, batch in enumerate(batches):
            for name in variants:
                use_variant(model, config, name)
                run = runs[name]
                torch.manual_seed(1000 * repeat + index)  # the same negatives for every variant
                with calls.recording():
                    run["full"].append(timed_train_step(model, trainer.optimizer, batch, device))
                run["llm_forward"].append(floor_of_recorded(calls, model, run, backward=True, device=device))
                trainer.optimizer.zero_grad(set_to_none=True)
                release_memory(device)
    use_variant(model, config, "default")
    result = {"steps": steps, "repeats": repeats, "rows_per_step": len(batches[0]),
              "torch_threads": torch.get_num_threads()}
    for name, run in runs.items():
        result[name] = compare(run["full"], run["floor"], run["real"], run["padded"])
        result[name]["llm_forward_seconds_median"] = statistics.median(run["llm_forward"])
    result["peak_memory_mb"] = peak_memory_mb(device)
    return result


def bf16_probe(llm, rows=4, length=224):
    """Is bfloat16 fast on this machine? One float32 and one bfloat16-autocast forward and backward of
    the frozen LLM over a ``[rows, length]`` batch (gradients into the inputs), and one 1024x1024
    matrix product in each dtype, side by side."""
    import torch

    from recbole_llmsrec.llm.backbone import fast_bfloat16

    device = llm.model.get_input_embeddings().weight.device
    ids = torch.randint(100, 1000, (rows, length), device=device)
    result = {"fast_bfloat16": fast_bfloat16(device), "batch": [rows, length]}
    grads = {}
    for name, dtype in (("float32", None), ("bfloat16", torch.bfloat16)):
        embeds = llm.model.get_input_embeddings()(ids).detach().requires_grad_(True)
        context = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
        sync(device)
        start = time.perf_counter()
        with context:
            hidden = llm.model.get_decoder()(inputs_embeds=embeds).last_hidden_state
        hidden.float().pow(2).mean().backward()
        sync(device)
        result[f"{name}_forward_backward_seconds"] = time.perf_counter() - start
        grads[name] = embeds.grad.flatten()
        a, b = torch.randn(1024, 1024, device=device), torch.randn(1024, 1024, device=device)
        a, b = (a.to(dtype), b.to(dtype)) if dtype else (a, b)
        start = time.perf_counter()
        for _ in range(3):
            a @ b
        sync(device)
        result[f"{name}_matmul_1024_seconds"] = (time.perf_counter() - start) / 3
    result["bfloat16_over_float32_step"] = result["bfloat16_forward_backward_seconds"] / result["float32_forward_backward_seconds"]
    result["input_gradient_cosine"] = float(torch.nn.functional.cosine_similarity(grads["float32"], grads["bfloat16"], dim=0))
    return result


def time_loader(train_data):
    start = time.perf_counter()
    count = sum(1 for _ in train_data)
    return {"batches": count, "seconds_per_batch": (time.perf_counter() - start) / count}


def time_evaluation(model, config, valid_data, eval_users, repeats, variants, device):
    """All item vectors and ``eval_users`` users' vectors (0: all), each variant, against bare
    no-grad forwards over the same prompts."""
    import torch

    calls = LLMCalls(model)
    model.eval()
    runs = {(name, part): {"full": [], "floor": [], "real": [], "padded": []}
            for name in variants for part in ("items", "users")}
    users = 0
    for _ in range(repeats):
        for name in variants:
            use_variant(model, config, name)
            model.clear_cache()
            for part in ("items", "users"):
                run = runs[name, part]
                sync(device)
                start = time.perf_counter()
                with calls.recording(), torch.no_grad():
                    if part == "items":
                        model.all_item_vectors()
                    else:
                        users = user_vectors_of(model, valid_data, eval_users, device)
                sync(device)
                run["full"].append(time.perf_counter() - start)
                floor_of_recorded(calls, model, run, backward=False, device=device)
    use_variant(model, config, "default")
    result = {"users": users, "items": model.n_items - 1, "repeats": repeats}
    for name in variants:
        items, users_run = runs[name, "items"], runs[name, "users"]
        full = [a + b for a, b in zip(items["full"], users_run["full"])]
        floor = [a + b for a, b in zip(items["floor"], users_run["floor"])]
        result[name] = {
            "items_vectors": compare(items["full"], items["floor"], items["real"], items["padded"]),
            "users_vectors": compare(users_run["full"], users_run["floor"], users_run["real"], users_run["padded"]),
            "both": compare(full, floor, [a + b for a, b in zip(items["real"], users_run["real"])],
                            [a + b for a, b in zip(items["padded"], users_run["padded"])]),
        }
    return result


def main():
    flags = parser(__doc__)
    flags.add_argument("--llm_path", default="smollm2-135m")
    flags.add_argument("--steps", type=int, default=3, help="distinct training batches")
    flags.add_argument("--repeats", type=int, default=3, help="timings of each batch (full and floor interleaved)")
    flags.add_argument("--eval_users", type=int, default=0, help="users whose vectors are timed (0: all)")
    flags.add_argument("--eval_repeats", type=int, default=1)
    flags.add_argument("--variants", default="anomaly,plain,default",
                       help=f"comma-separated, of {', '.join(VARIANTS)} (see VARIANTS)")
    flags.add_argument("--bf16_probe", action="store_true", help="time bfloat16 against float32 on a small batch first")
    flags.add_argument("--report", default="step_floor", help="report name: benchmarks/results/<report>_<dataset>.json")
    flags.add_argument("--teacher_checkpoint", default="", help="a SASRec checkpoint; empty: a one-epoch teacher")
    flags.add_argument("--llmsrec_config", default="{}", help="JSON dict of LLMSRec config overrides")
    args = flags.parse_args()
    common = start(args)

    settings = {**common, "llm_path": args.llm_path, **quick_teacher(common, args.teacher_checkpoint),
                **json.loads(args.llmsrec_config)}
    config, (_, train_data, valid_data, _, model, trainer) = build_llmsrec(settings)
    device = config["device"]
    report = report_head(args, "step_floor.py", [
        f"--llm_path={args.llm_path}", f"--steps={args.steps}", f"--repeats={args.repeats}",
        f"--eval_users={args.eval_users}", f"--eval_repeats={args.eval_repeats}", f"--variants={args.variants}",
        f"--teacher_checkpoint={args.teacher_checkpoint}", f"--llmsrec_config='{args.llmsrec_config}'",
        f"--report={args.report}"] + (["--bf16_probe"] if args.bf16_probe else []))
    del report["models"]
    report.update(
        device=str(device), llmsrec_overrides=json.loads(args.llmsrec_config),
        prompt_show_dates=config["prompt_show_dates"], prompt_history_len=config["prompt_history_len"],
        train_batch_size=config["train_batch_size"], llm_dtype=config["llm_dtype"],
    )
    report["loader"] = time_loader(train_data)
    if args.bf16_probe:
        report["bf16_probe"] = bf16_probe(model.llm)
        print(json.dumps(report["bf16_probe"], indent=1), flush=True)
    variants = args.variants.split(",")
    for name in variants:
        variant_settings(config, name)
    report["variants"] = {name: variant_settings(config, name) for name in variants}
    report["head_cache_filled"] = fill_head_cache(model, config, valid_data, variants, device, args.eval_users)
    report["training"] = training = time_training(
        model, trainer, config, train_data, args.steps, args.repeats, variants, device)
    for name in variants:
        full = training[name]["full"]["seconds_all"]
        training[name]["ratio_with_loader"] = (
            sum(full) + len(full) * report["loader"]["seconds_per_batch"]) / sum(training[name]["floor"]["seconds_all"])
    print(json.dumps(training, indent=1), flush=True)
    if args.eval_repeats > 0:
        # anomaly mode records nothing without gradients: evaluation compares plain and default only
        report["evaluation"] = time_evaluation(model, config, valid_data, args.eval_users, args.eval_repeats,
                                               [name for name in variants if name != "anomaly"], device)
        print(json.dumps(report["evaluation"], indent=1), flush=True)
    report["peak_memory_mb"] = peak_memory_mb(device)
    if "default" in variants:  # the configuration's step and evaluation pass over the float32 floor
        report["step_over_fp32_floor"] = training["default"]["ratio_median"]
        if "evaluation" in report:
            report["eval_over_fp32_floor"] = report["evaluation"]["default"]["both"]["ratio_median"]
    report["ratios"] = {name: {"step": training[name]["ratio_median"],
                               "eval": report.get("evaluation", {}).get(name, {}).get("both", {}).get("ratio_median")}
                        for name in variants}

    out = report_path(args, args.report)
    write_report(report, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
