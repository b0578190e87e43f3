"""LLMSRec against its SASRec teacher on one dataset, same split and seed.

SASRec (RecBole's own, with LLMSRec's teacher settings) is trained first; its checkpoint is then
LLMSRec's frozen teacher. Both are tested with ``uni100`` (1 positive + 99 sampled negatives,
the paper's protocol) and with full ranking. Each model runs in its own process so its peak RSS is
its own.

    python benchmarks/llmsrec_vs_sasrec.py --dataset=ml-100k --sasrec_epochs=8 --llmsrec_epochs=2

Writes ``benchmarks/results/llmsrec_vs_sasrec_<dataset>.json``.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import REPO, parser, report_head, report_path, run_in_child, start, write_report  # noqa: E402


def main():
    flags = parser(__doc__)
    flags.add_argument("--sasrec_epochs", type=int, default=8)
    flags.add_argument("--llmsrec_epochs", type=int, default=2)
    flags.add_argument("--llm_path", default="smollm2-135m")
    flags.add_argument("--llmsrec_config", default="{}", help="JSON dict of LLMSRec config overrides")
    args = flags.parse_args()
    common = start(args)

    from recbole_llmsrec.config import Config

    teacher_settings = Config(model="LLMSRec", config_dict=common)["teacher_config"]
    sasrec = run_in_child("SASRec", {**common, **teacher_settings, "epochs": args.sasrec_epochs})
    print(json.dumps(sasrec, indent=1), flush=True)
    with open(os.path.join(args.workdir, f"sasrec_{args.dataset}.json"), "w") as f:
        json.dump(sasrec, f, indent=1)
    llmsrec = run_in_child("LLMSRec", {
        **common,
        "llm_path": args.llm_path,
        "teacher_checkpoint": os.path.join(REPO, sasrec["checkpoint"]),
        "epochs": args.llmsrec_epochs,
        **json.loads(args.llmsrec_config),
    })
    print(json.dumps(llmsrec, indent=1), flush=True)

    report = report_head(args, "llmsrec_vs_sasrec.py", [
        f"--sasrec_epochs={args.sasrec_epochs}", f"--llmsrec_epochs={args.llmsrec_epochs}",
        f"--llm_path={args.llm_path}", f"--llmsrec_config='{args.llmsrec_config}'"])
    report.update(llmsrec_overrides=json.loads(args.llmsrec_config), teacher_settings=teacher_settings)
    report["models"] = {"SASRec": sasrec, "LLMSRec": llmsrec}
    out = report_path(args, "llmsrec_vs_sasrec")
    write_report(report, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
