"""A-LLMRec on one dataset: both stages, with the split, seed, backbone and SASRec teacher of the
LLMSRec benchmark (``llmsrec_vs_sasrec.py``), tested with ``uni100`` and full ranking.

    python benchmarks/allmrec.py --dataset=ml-100k --teacher_checkpoint=benchmarks/runs/saved/SASRec-....pth \\
        --stage2_epochs=1 --allmrec_config='{"prompt_show_dates": false, "learning_rate": 0.001}'

Writes ``benchmarks/results/allmrec_<dataset>.json`` with metrics, time per epoch per stage and
trainable parameters per stage.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import parser, report_head, report_path, run_in_child, start, write_report  # noqa: E402


def main():
    flags = parser(__doc__)
    flags.add_argument("--teacher_checkpoint", default=None,
                       help="the SASRec teacher LLMSRec was benchmarked with (empty: train one and cache it)")
    flags.add_argument("--stage2_epochs", type=int, default=1)
    flags.add_argument("--llm_path", default="smollm2-135m")
    flags.add_argument("--allmrec_config", default="{}", help="JSON dict of ALLMRec config overrides")
    args = flags.parse_args()
    teacher = os.path.abspath(args.teacher_checkpoint) if args.teacher_checkpoint else None
    common = start(args)
    overrides = json.loads(args.allmrec_config)
    result = run_in_child("ALLMRec", {
        **common, "llm_path": args.llm_path, "teacher_checkpoint": teacher, "epochs": args.stage2_epochs, **overrides,
    })
    print(json.dumps(result, indent=1), flush=True)

    report = report_head(args, "allmrec.py", [
        f"--teacher_checkpoint={args.teacher_checkpoint}", f"--stage2_epochs={args.stage2_epochs}",
        f"--llm_path={args.llm_path}", f"--allmrec_config='{args.allmrec_config}'"])
    report.update(allmrec_overrides=overrides, teacher_checkpoint=args.teacher_checkpoint)
    report["models"] = {"ALLMRec": result}
    out = report_path(args, "allmrec")
    write_report(report, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
