"""What the benchmark scripts share: one model trained and tested per child process, and the
common command-line flags and report header."""

import argparse
import json
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import time
from datetime import datetime, timezone
from queue import Empty

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METRICS = ("ndcg@10", "hit@10", "ndcg@20", "hit@20")


def run_model(model_name, config_dict, queue):
    """Train ``model_name`` and test it in both evaluation modes (runs in a child process)."""
    import torch
    from recbole.utils import init_logger, init_seed

    from recbole_llmsrec.config import Config
    from recbole_llmsrec.data import create_dataset, data_preparation
    from recbole_llmsrec.quick_start import _build
    from recbole_llmsrec.utils import get_trainer

    config = Config(model=model_name, config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    dataset, train_data, valid_data, test_data, model, trainer = _build(config)

    epoch_seconds = []
    train_epoch = trainer._train_epoch

    def timed_train_epoch(*args, **kwargs):
        start = time.perf_counter()
        result = train_epoch(*args, **kwargs)
        epoch_seconds.append(time.perf_counter() - start)
        return result

    trainer._train_epoch = timed_train_epoch
    valid_scores = []
    valid_epoch = trainer._valid_epoch

    def recorded_valid_epoch(*args, **kwargs):
        score, result = valid_epoch(*args, **kwargs)
        valid_scores.append(float(score))
        return score, result

    trainer._valid_epoch = recorded_valid_epoch
    best_valid_score, best_valid_result = trainer.fit(train_data, valid_data, saved=True, show_progress=config["show_progress"])

    results = {}
    start = time.perf_counter()
    results["uni100"] = dict(trainer.evaluate(test_data, load_best_model=True))
    eval_seconds = {"uni100": time.perf_counter() - start}

    full_config = Config(model=model_name, config_dict={**config_dict, "eval_args": {
        **config["eval_args"], "mode": {"valid": "full", "test": "full"}}})
    _, _, full_test_data = data_preparation(full_config, create_dataset(full_config))
    full_trainer = get_trainer(full_config["MODEL_TYPE"], model_name)(full_config, model)
    # the model already holds the best checkpoint (loaded for the uni100 test), so LLMSRec reuses
    # the user and item vectors of that pass: the full-ranking time is the extra cost of full ranking
    start = time.perf_counter()
    results["full"] = dict(full_trainer.evaluate(full_test_data, load_best_model=False))
    eval_seconds["full"] = time.perf_counter() - start

    # staged models (A-LLMRec): epoch times, losses and trainable parameters per stage, in stage order
    stages, done = {}, 0
    for stage, losses in getattr(trainer, "stage_train_loss", {}).items():
        seconds = epoch_seconds[done : done + len(losses)]
        done += len(losses)
        stages[stage] = {
            "epochs_run": len(seconds),
            "train_seconds_per_epoch": statistics.median(seconds) if seconds else None,
            "train_seconds_per_epoch_all": seconds,
            "train_loss_by_epoch": [float(losses[e]) for e in sorted(losses)],
            "trainable_params": sum(p.numel() for name, p in model.named_parameters()
                                    if name.startswith(model.training_stages[stage])),
        }

    queue.put({
        "model": model_name,
        **({"stages": stages} if stages else {}),
        "metrics": {mode: {m: float(res[m]) for m in METRICS} for mode, res in results.items()},
        "best_valid": {k: float(v) for k, v in best_valid_result.items()},
        "epochs_run": len(epoch_seconds),
        "valid_score_by_epoch": valid_scores,
        # median: robust to an epoch slowed by other work on a shared machine; None: nothing trains
        "train_seconds_per_epoch": statistics.median(epoch_seconds) if epoch_seconds else None,
        "train_seconds_per_epoch_all": epoch_seconds,
        "eval_seconds": eval_seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total_params": sum(p.numel() for p in model.parameters()),
        "checkpoint": os.path.relpath(trainer.saved_model_file, REPO),  # results travel between checkouts
        "checkpoint_mb": os.path.getsize(trainer.saved_model_file) / 2**20,
        "torch_threads": torch.get_num_threads(),
    })


def native_test_batch(model_name, config_dict):
    """``(config, model, interaction, blocks)``: the model built with ``scoring: native`` (freshly
    initialised adapters and projectors) in eval mode, its first test batch, and the sizes of the
    batch's per-user row blocks in order. For children that time or compare native scoring."""
    import torch
    from recbole.utils import init_logger, init_seed

    from recbole_llmsrec.config import Config
    from recbole_llmsrec.quick_start import _build

    config = Config(model=model_name, config_dict={**config_dict, "scoring": "native"})
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    _, _, _, test_data, model, _ = _build(config)
    model.eval()
    interaction = next(iter(test_data))[0]
    blocks = torch.unique_consecutive(interaction[model.USER_ID], return_counts=True)[1].tolist()
    return config, model, interaction, blocks


def run_in_child(model_name, config_dict, target=None, *args):
    """``target(model_name, config_dict, *args, queue)`` (default :func:`run_model`) in a child process;
    returns what it puts on the queue. ``target`` must be importable (a module-level function)."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target or run_model, args=(model_name, config_dict, *args, queue))
    process.start()
    while True:
        try:
            result = queue.get(timeout=10)
            break
        except Empty:
            if not process.is_alive():
                raise RuntimeError(f"{model_name} failed (exit code {process.exitcode}); see its traceback above")
    process.join()
    return result


def parser(doc):
    """Flags every benchmark takes: dataset, seed, shared config overrides, work folder, output."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--config", default="{}", help="JSON dict of config overrides for every model (e.g. data_path)")
    parser.add_argument("--workdir", default=os.path.join(REPO, "benchmarks", "runs"))
    parser.add_argument("--out", default=None)
    return parser


def start(args):
    """Move into the work folder and return the settings every model of the run shares."""
    sys.argv = sys.argv[:1]  # RecBole's Config reads --key=value flags from sys.argv
    if args.out:  # relative to where the command was given, not to the work folder
        args.out = os.path.abspath(args.out)
    args.workdir = os.path.abspath(args.workdir)
    if getattr(args, "teacher_checkpoint", None):  # given relative to where the command ran
        args.teacher_checkpoint = os.path.relpath(os.path.abspath(args.teacher_checkpoint), REPO)
    overrides = json.loads(args.config)
    # RecBole reads data_path relative to the working folder, which is about to change: a given one
    # is taken relative to where the command ran, and a dataset fetched into the repository's
    # dataset/ (python -m recbole_llmsrec.data.fetch_ml1m) is found there
    fetched = os.path.join(REPO, "dataset")
    if "data_path" in overrides:
        overrides["data_path"] = os.path.abspath(overrides["data_path"]) + os.sep
    elif os.path.isdir(os.path.join(fetched, args.dataset)):
        overrides["data_path"] = fetched + os.sep
    os.makedirs(args.workdir, exist_ok=True)
    os.chdir(args.workdir)
    return {
        "dataset": args.dataset,
        "seed": args.seed,
        "checkpoint_dir": os.path.join(args.workdir, "saved"),
        "show_progress": False,
        **overrides,
    }


def machine():
    """The machine a result was measured on, in words."""
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()}"


def report_head(args, script, flags):
    """The start of a results JSON: what ran, where, when, with which command."""
    command = f"python benchmarks/{script} --dataset={args.dataset} --seed={args.seed} " + " ".join(flags)
    if args.config != "{}":
        command += f" --config='{args.config}'"
    return {
        "dataset": args.dataset,
        "seed": args.seed,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "machine": machine(),
        "command": command.strip(),
        "models": {},
    }


def report_path(args, name):
    """``--out``, or ``benchmarks/results/<name>_<dataset>.json``."""
    return args.out or os.path.join(REPO, "benchmarks", "results", f"{name}_{args.dataset}.json")


def write_report(report, out):
    """``report`` as JSON at ``out``, written then renamed (an interrupted run leaves no half file)."""
    with open(f"{out}.partial", "w") as f:
        json.dump(report, f, indent=1)
    os.replace(f"{out}.partial", out)
