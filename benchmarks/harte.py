"""The headline comparison of Harte et al. on one dataset: random vs text-initialised SASRec and
BERT4Rec, and the training-free LLMSeqSim, with one split, seed and evaluation.

Every model uses RecBole's own settings for SASRec/BERT4Rec (the LLM2 variants change only the
initial item table: all-MiniLM-L6-v2 title vectors, PCA to hidden_size). Each runs in its own
process and is tested with ``uni100`` and full ranking.

    python benchmarks/harte.py --dataset=ml-100k --epochs=10

Writes ``benchmarks/results/harte_<dataset>.json``.
"""

import argparse
import json
import os
import platform
import sys
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llmsrec_vs_sasrec import REPO, run_in_child  # noqa: E402

MODELS = ("LLMSeqSim", "SASRec", "LLM2SASRec", "BERT4Rec", "LLM2BERT4Rec")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--config", default="{}", help="JSON dict of config overrides for every model")
    parser.add_argument("--workdir", default=os.path.join(REPO, "benchmarks", "runs"))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    sys.argv = sys.argv[:1]  # RecBole's Config reads --key=value flags from sys.argv
    os.makedirs(args.workdir, exist_ok=True)
    os.chdir(args.workdir)

    common = {
        "dataset": args.dataset,
        "seed": args.seed,
        "epochs": args.epochs,
        "checkpoint_dir": os.path.join(args.workdir, "saved"),
        "show_progress": False,
        **json.loads(args.config),
    }
    out = args.out or os.path.join(REPO, "benchmarks", "results", f"harte_{args.dataset}.json")
    report = {
        "dataset": args.dataset,
        "seed": args.seed,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()}",
        "command": f"python benchmarks/harte.py --dataset={args.dataset} --models={args.models} "
                   f"--epochs={args.epochs}" + (f" --config='{args.config}'" if args.config != "{}" else ""),
        "models": {},
    }
    for model in args.models.split(","):
        result = run_in_child(model, common)
        print(json.dumps(result, indent=1), flush=True)
        report["models"][model] = result
        with open(out, "w") as f:  # after every model: a partial report survives an interruption
            json.dump(report, f, indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
