"""TALLRec, CoLLM and LLaRA on one dataset, with the split, seed, backbone and SASRec teacher of the
LLMSRec benchmark (``llmsrec_vs_sasrec.py``).

Each model is trained with ``scoring: retrieval`` (the form the leaderboard and the LLM-SRec paper
use) and tested with ``uni100`` and full ranking. Then, for ``scoring: native``, the same test
users' candidates are scored twice side by side in one process, once with the prompt prefix's
KV cache shared by all candidates and once with one full prompt per candidate, user by user
(alternating which goes first); the report gives both times, the speed-up and the largest score
difference. Each model runs in its own processes.

    python benchmarks/baselines.py --dataset=ml-100k --teacher_checkpoint=benchmarks/runs/saved/SASRec-....pth \\
        --epochs=1 --native_users=5 --baselines_config='{"prompt_show_dates": false, "learning_rate": 0.001}'

With ``--retrieval_from=results/<dataset>/runs`` the retrieval training is not repeated: each
model's numbers are read from its record in a leaderboard run (``python -m
recbole_llmsrec.leaderboard``, which trains and tests every model once with one split, seed and
evaluation), and only the native scoring is timed here. The record's file and settings are named in
the report.

With ``--native_from=benchmarks/results/baselines_<dataset>.json`` the native timing is not repeated
either: each model's timing is taken from that earlier report of this script (its date and command
are kept in the new report), e.g. to add a model's retrieval record from a later leaderboard run.
The earlier report must have the same dataset, seed, teacher, LLM and overrides.

Writes ``benchmarks/results/baselines_<dataset>.json``: per model the metrics, time per epoch
(per step for CoLLM), trainable parameters, and the native scoring timings. The native timing
scores with freshly initialised adapters and projectors: its cost and the cached/naive agreement
do not depend on what was learnt.
"""

import glob
import json
import os
import shlex
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (  # noqa: E402
    METRICS, REPO, native_test_batch, parser, report_head, report_path, run_in_child, start, write_report)

MODELS = ("TALLRec", "CoLLM", "LLaRA")


def native_scoring_speed(model_name, config_dict, users, queue):
    """Time cached and naive native scoring of the first ``users`` test users (runs in a child process)."""
    import torch

    config, model, interaction, blocks = native_test_batch(model_name, config_dict)
    # one more user than timed: the first warms both paths up (allocator, first calls) untimed
    blocks = blocks[: users + 1]
    timings = {"cached": [], "naive": []}
    largest_difference, start = 0.0, 0
    with torch.no_grad():
        for k, size in enumerate(blocks):
            rows = interaction[torch.arange(start, start + size)]
            start += size
            scores = {}
            for cached in ((True, False) if k % 2 == 0 else (False, True)):
                began = time.perf_counter()
                scores[cached] = model.native_predict(rows, cached=cached)
                if k > 0:
                    timings["cached" if cached else "naive"].append(time.perf_counter() - began)
            largest_difference = max(largest_difference, float((scores[True] - scores[False]).abs().max()))
    blocks = blocks[1:]
    cached_total, naive_total = sum(timings["cached"]), sum(timings["naive"])
    queue.put({
        "users": len(blocks),
        "warm_up_users": 1,
        "candidates_per_user": statistics.mean(blocks),
        "cached_seconds": cached_total,
        "naive_seconds": naive_total,
        "speedup": naive_total / cached_total,
        "cached_seconds_per_user": timings["cached"],
        "naive_seconds_per_user": timings["naive"],
        "max_abs_score_difference": largest_difference,
        "chunk_size": config["llm_batch_size"],
        "torch_threads": torch.get_num_threads(),
    })


# settings of a leaderboard record worth showing beside its numbers
RECORD_SETTINGS = ("llm_path", "teacher_checkpoint", "scoring", "epochs", "learning_rate", "collm_lora_epochs",
                   "collm_lora_learning_rate", "train_batch_size", "prompt_show_dates", "prompt_history_len",
                   "eval_batch_size", "seed")


def leaderboard_result(folder, model_name, dataset, seed):
    """The newest leaderboard record of ``model_name`` in ``folder``, as this benchmark reports it."""
    paths = [path for path in glob.glob(os.path.join(folder, f"{model_name}-*.json"))
             if not path.endswith(".settings.json")]
    found = []
    for path in paths:
        with open(path) as f:
            record = json.load(f)
        with open(path[: -len(".json")] + ".settings.json") as f:
            settings = json.load(f)["settings"]
        if record["model"] == model_name and record["dataset"] == dataset and settings["seed"] == seed:
            found.append((record["date"], path, record, settings))
    if not found:  # said in the report and on the console; the native timing still runs
        missing = (f"no leaderboard record of {model_name} on {dataset} with seed {seed} in "
                   f"{os.path.relpath(folder, REPO)}; run python -m recbole_llmsrec.leaderboard --dataset={dataset} "
                   f"--seed={seed} --models={model_name} first, or leave out --retrieval_from to train it here")
        print(f"WARNING: {missing}", flush=True)
        return {"model": model_name, "retrieval_missing": missing}
    _, path, record, settings = max(found, key=lambda item: item[0])
    if settings.get("scoring") != "retrieval":
        raise SystemExit(f"{path} was trained with scoring: {settings.get('scoring')}; the benchmark reports retrieval")
    epochs = record.get("train_seconds_per_epoch_all")
    return {
        "model": model_name,
        "source": os.path.relpath(path, REPO),
        "source_date": record["date"],
        "source_commit": record.get("commit"),
        "settings": {key: settings.get(key) for key in RECORD_SETTINGS},
        "metrics": {mode: {m: float(result[m]) for m in METRICS} for mode, result in record["results"].items()},
        "best_valid": record["best_valid"],
        "epochs_run": record["epochs_run"],
        # median: robust to an epoch slowed by other work on a shared machine; older records hold
        # only the fit's wall time (epochs and their validation together)
        "train_seconds_per_epoch": statistics.median(epochs) if epochs else None,
        "train_seconds_per_epoch_all": epochs,
        "valid_seconds_all": record.get("valid_seconds_all"),
        "fit_seconds": record["train_seconds"],
        "eval_seconds": record["eval_seconds"],
        "peak_rss_mb": record.get("peak_rss_mb"),
        "trainable_params": record["trainable_params"],
        "total_params": record["total_params"],
        "checkpoint": record["checkpoint"],
    }


def earlier_native_timings(path, report, models):
    """The native timing of each of ``models`` from an earlier report of this script, checked to match
    ``report``; before anything runs, so a mismatch or a missing model costs no training."""
    with open(path) as f:
        earlier = json.load(f)
    for key in ("dataset", "seed", "teacher_checkpoint", "baselines_overrides"):
        if earlier.get(key) != report.get(key):
            raise SystemExit(f"{path} was measured with {key} {earlier.get(key)!r}, this run has {report.get(key)!r}; "
                             f"time the native scoring here (leave out --native_from)")
    if f"--llm_path={report['llm_path']}" not in shlex.split(earlier["command"]):
        raise SystemExit(f"{path} was not measured with --llm_path={report['llm_path']}; leave out --native_from")
    missing = [name for name in models if "native_scoring" not in earlier["models"].get(name, {})]
    if missing:
        raise SystemExit(f"{path} has no native timing of {', '.join(missing)}; leave out --native_from")
    source = {"report": os.path.relpath(os.path.abspath(path), REPO), "date": earlier["date"],
              "command": earlier["command"]}
    return {name: {**earlier["models"][name]["native_scoring"], "measured_in": source} for name in models}


def main():
    flags = parser(__doc__)
    flags.add_argument("--teacher_checkpoint", default=None,
                       help="the SASRec teacher LLMSRec was benchmarked with (empty: train one and cache it)")
    flags.add_argument("--epochs", type=int, default=1, help="retrieval training epochs per model (per step for CoLLM)")
    flags.add_argument("--native_users", type=int, default=5, help="test users for the cached vs naive timing")
    flags.add_argument("--models", default=",".join(MODELS))
    flags.add_argument("--llm_path", default="smollm2-135m")
    flags.add_argument("--baselines_config", default="{}", help="JSON dict of config overrides for the three models")
    flags.add_argument("--retrieval_from", default=None,
                       help="a leaderboard's runs folder (results/<dataset>/runs): read the retrieval numbers from "
                            "its records instead of training here")
    flags.add_argument("--native_from", default=None,
                       help="an earlier report of this script: take the native timings from it instead of timing here")
    args = flags.parse_args()
    native_from = os.path.abspath(args.native_from) if args.native_from else None
    retrieval_from = os.path.abspath(args.retrieval_from) if args.retrieval_from else None
    teacher = os.path.abspath(args.teacher_checkpoint) if args.teacher_checkpoint else None
    common = start(args)
    overrides = json.loads(args.baselines_config)
    shared = {**common, "llm_path": args.llm_path, "teacher_checkpoint": teacher, **overrides}

    report = report_head(args, "baselines.py", [
        f"--teacher_checkpoint={args.teacher_checkpoint}", f"--epochs={args.epochs}",
        f"--native_users={args.native_users}", f"--models={args.models}", f"--llm_path={args.llm_path}",
        f"--baselines_config='{args.baselines_config}'"]
        + ([f"--retrieval_from={args.retrieval_from}"] if args.retrieval_from else [])
        + ([f"--native_from={args.native_from}"] if args.native_from else []))
    report.update(baselines_overrides=overrides, teacher_checkpoint=args.teacher_checkpoint)
    out = report_path(args, "baselines")
    models = args.models.split(",")
    earlier = earlier_native_timings(native_from, {**report, "llm_path": args.llm_path}, models) if native_from else {}
    for name in models:
        epochs = {"epochs": args.epochs, "collm_lora_epochs": args.epochs} if name == "CoLLM" else {"epochs": args.epochs}
        if retrieval_from:
            result = leaderboard_result(retrieval_from, name, args.dataset, args.seed)
        else:
            result = run_in_child(name, {**shared, **epochs, "scoring": "retrieval"})
        if native_from:
            result["native_scoring"] = earlier[name]
        else:
            result["native_scoring"] = run_in_child(name, shared, native_scoring_speed, args.native_users)
        print(json.dumps(result, indent=1), flush=True)
        report["models"][name] = result
        write_report(report, out)  # after every model, so a stopped run keeps what it measured
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
