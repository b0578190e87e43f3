"""How much of LLMSeqPrompt's metrics is the luck of its sampled titles.

LLMSeqPrompt samples its titles (temperature > 0) from one random stream per user and sample,
seeded by ``llmseqprompt_sample_seed`` (empty: ``seed``), so a pass is reproducible and a shuffled
pass draws the same random numbers as the original one; with another sample seed the same
histories get other titles. This script reloads a trained checkpoint and repeats the test pass over
the *original* histories, with the same uni100 negatives as the leaderboard, once per ``--draws``
sample seed (seed + 1, seed + 2, ...); full ranking reuses each pass's titles. The spread of these
passes around the leaderboard's
record is the noise floor that a shuffled change has to clear.

    python benchmarks/llmseqprompt_sampling_noise.py --model_file=saved/LLMSeqPrompt-....pth \\
        --record=results/ml-100k/runs/LLMSeqPrompt-<key>.json --draws=1

Writes ``benchmarks/results/llmseqprompt_sampling_noise_<dataset>.json``.
"""

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import REPO, machine, report_path, write_report  # noqa: E402


def main():
    flags = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    flags.add_argument("--model_file", required=True, help="an LLMSeqPrompt checkpoint")
    flags.add_argument("--record", required=True, help="the leaderboard record of that checkpoint's run")
    flags.add_argument("--draws", type=int, default=1, help="repeated test passes, one random state each")
    flags.add_argument("--out", default=None)
    args = flags.parse_args()
    sys.argv = sys.argv[:1]  # RecBole's Config reads --key=value flags from sys.argv

    import torch

    from recbole_llmsrec.evaluation.ranking import evaluate_per_user, fixed_batches, full_sort_loader
    from recbole_llmsrec.evaluation.shuffle import load_checkpoint_run, relative_change

    with open(args.record) as f:
        record = json.load(f)
    config, _, _, _, test_data, trainer = load_checkpoint_run(args.model_file)
    if config["model"] != "LLMSeqPrompt":
        raise ValueError(f"{args.model_file} is a {config['model']} checkpoint; this script measures LLMSeqPrompt")
    batches = fixed_batches(test_data, config["seed"], config["reproducibility"])  # the leaderboard's negatives
    full_data = full_sort_loader(config, test_data)
    draws = []
    for draw in range(1, args.draws + 1):
        trainer.model.forget_titles()  # new titles for every history, from other streams
        trainer.model.sample_seed = config["seed"] + draw
        start = time.perf_counter()
        results = {"uni100": evaluate_per_user(trainer, test_data, batches, show_progress=True).mean()}
        seconds = time.perf_counter() - start
        results["full"] = evaluate_per_user(trainer, full_data, show_progress=False).mean()
        draws.append({
            "sample_seed": config["seed"] + draw,
            "seconds": seconds,
            "results": results,
            "change_from_record": {mode: relative_change(record["results"][mode], results[mode]) for mode in results},
        })
        print(json.dumps(draws[-1], indent=1))
    report = {
        "dataset": config["dataset"],
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "machine": machine(),
        "command": "python benchmarks/llmseqprompt_sampling_noise.py "
                   f"--model_file={os.path.relpath(args.model_file, REPO)} --record={os.path.relpath(args.record, REPO)} "
                   f"--draws={args.draws}",
        "torch_threads": torch.get_num_threads(),
        "record": record["results"],
        "record_shuffle_change": {mode: {scope: value["change"] for scope, value in scopes.items()}
                                  for mode, scopes in record.get("shuffle", {}).items()},
        "draws": draws,
    }
    args.dataset = config["dataset"]  # the checkpoint's, for the default file name
    out = report_path(args, "llmseqprompt_sampling_noise")
    write_report(report, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
