"""The headline comparison of Harte et al. on one dataset: random vs text-initialised SASRec and
BERT4Rec, and the training-free LLMSeqSim, with one split, seed and evaluation.

Every model uses RecBole's own settings for SASRec/BERT4Rec (the LLM2 variants change only the
initial item table: all-MiniLM-L6-v2 title vectors, PCA to hidden_size). Each runs in its own
process and is tested with ``uni100`` and full ranking.

    python benchmarks/harte.py --dataset=ml-100k --epochs=10

Writes ``benchmarks/results/harte_<dataset>.json``.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import parser, report_head, report_path, run_in_child, start, write_report  # noqa: E402

MODELS = ("LLMSeqSim", "SASRec", "LLM2SASRec", "BERT4Rec", "LLM2BERT4Rec")


def main():
    flags = parser(__doc__)
    flags.add_argument("--models", default=",".join(MODELS))
    flags.add_argument("--epochs", type=int, default=10)
    args = flags.parse_args()
    common = {**start(args), "epochs": args.epochs}
    out = report_path(args, "harte")
    report = report_head(args, "harte.py", [f"--models={args.models}", f"--epochs={args.epochs}"])
    for model in args.models.split(","):
        result = run_in_child(model, common)
        print(json.dumps(result, indent=1), flush=True)
        report["models"][model] = result
        write_report(report, out)  # after every model: a partial report survives an interruption
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
