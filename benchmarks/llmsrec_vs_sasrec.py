"""LLMSRec against its SASRec teacher on one dataset, same split and seed.

SASRec (RecBole's own, with LLMSRec's teacher settings) is trained first; its checkpoint is then
LLMSRec's frozen teacher. Both are tested with ``uni100`` (1 positive + 99 sampled negatives,
the paper's protocol) and with full ranking. Each model runs in its own process so its peak RSS is
its own.

    python benchmarks/llmsrec_vs_sasrec.py --dataset=ml-100k --sasrec_epochs=8 --llmsrec_epochs=2

Writes ``benchmarks/results/llmsrec_vs_sasrec_<dataset>.json``.
"""

import argparse
import json
import multiprocessing
import os
import platform
from queue import Empty
import resource
import statistics
import sys
import time
from datetime import datetime, timezone

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METRICS = ("ndcg@10", "hit@10", "ndcg@20", "hit@20")


def _run_model(model_name, config_dict, queue):
    """Train ``model_name`` and test it in both evaluation modes (runs in a child process)."""
    import torch
    from recbole.data import data_preparation
    from recbole.utils import init_logger, init_seed

    from recbole_llmsrec.config import Config
    from recbole_llmsrec.data import create_dataset
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

    queue.put({
        "model": model_name,
        "metrics": {mode: {m: float(res[m]) for m in METRICS} for mode, res in results.items()},
        "best_valid": {k: float(v) for k, v in best_valid_result.items()},
        "epochs_run": len(epoch_seconds),
        # median: robust to an epoch slowed by other work on a shared machine; None: nothing trains
        "train_seconds_per_epoch": statistics.median(epoch_seconds) if epoch_seconds else None,
        "train_seconds_per_epoch_all": epoch_seconds,
        "eval_seconds": eval_seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total_params": sum(p.numel() for p in model.parameters()),
        "checkpoint": trainer.saved_model_file,
        "checkpoint_mb": os.path.getsize(trainer.saved_model_file) / 2**20,
        "torch_threads": torch.get_num_threads(),
    })


def run_in_child(model_name, config_dict):
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_run_model, args=(model_name, config_dict, queue))
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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--sasrec_epochs", type=int, default=8)
    parser.add_argument("--llmsrec_epochs", type=int, default=2)
    parser.add_argument("--llm_path", default="smollm2-135m")
    parser.add_argument("--llmsrec_config", default="{}", help="JSON dict of LLMSRec config overrides")
    parser.add_argument("--config", default="{}", help="JSON dict of config overrides for both models (e.g. data_path)")
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--workdir", default=os.path.join(REPO, "benchmarks", "runs"))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    sys.argv = sys.argv[:1]  # RecBole's Config reads --key=value flags from sys.argv
    os.makedirs(args.workdir, exist_ok=True)
    os.chdir(args.workdir)

    from recbole_llmsrec.config import Config

    common = {
        "dataset": args.dataset,
        "seed": args.seed,
        "checkpoint_dir": os.path.join(args.workdir, "saved"),
        "show_progress": False,
        **json.loads(args.config),
    }
    teacher_settings = Config(model="LLMSRec", config_dict=common)["teacher_config"]
    sasrec = run_in_child("SASRec", {**common, **teacher_settings, "epochs": args.sasrec_epochs})
    print(json.dumps(sasrec, indent=1), flush=True)
    with open(os.path.join(args.workdir, f"sasrec_{args.dataset}.json"), "w") as f:
        json.dump(sasrec, f, indent=1)
    llmsrec = run_in_child("LLMSRec", {
        **common,
        "llm_path": args.llm_path,
        "teacher_checkpoint": sasrec["checkpoint"],
        "epochs": args.llmsrec_epochs,
        **json.loads(args.llmsrec_config),
    })
    print(json.dumps(llmsrec, indent=1), flush=True)

    report = {
        "dataset": args.dataset,
        "seed": args.seed,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()}",
        "command": "python benchmarks/llmsrec_vs_sasrec.py " + " ".join(
            f"--{k}={v}" for k, v in [("dataset", args.dataset), ("sasrec_epochs", args.sasrec_epochs),
                                      ("llmsrec_epochs", args.llmsrec_epochs), ("llm_path", args.llm_path)])
        + f" --llmsrec_config='{args.llmsrec_config}'" + (f" --config='{args.config}'" if args.config != "{}" else ""),
        "llmsrec_overrides": json.loads(args.llmsrec_config),
        "teacher_settings": teacher_settings,
        "models": {"SASRec": sasrec, "LLMSRec": llmsrec},
    }
    out = args.out or os.path.join(REPO, "benchmarks", "results", f"llmsrec_vs_sasrec_{args.dataset}.json")
    with open(out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
