"""Cached against naive native LLaRA scores on real data: how far apart, and whether the order of a
user's candidates changes.

LLaRA's native score is the summed log-probability of a candidate's title after a prompt listing
20 candidates. The cached path runs the prompt once and the titles in a second call; the naive path
runs one full prompt per candidate. The two sum float32 values in another order, so they differ a
little; this measures how much, per user, on a freshly initialised model (agreement does not depend
on training), and compares the candidates' order (before the tie-break).

    python benchmarks/llara_agreement.py --dataset=ml-100k --users=2 \\
        --teacher_checkpoint=benchmarks/runs/saved/SASRec-....pth --llara_config='{"prompt_show_dates": false}'

Writes ``benchmarks/results/llara_agreement_<dataset>.json``.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (  # noqa: E402
    REPO, native_test_batch, parser, report_head, report_path, run_in_child, start, write_report)


def agreement(model_name, config_dict, users, queue):
    """Per user of the first test batch: cached and naive listwise scores compared (in a child process)."""
    import torch

    from recbole_llmsrec.llm.scoring import seeded_generator
    from recbole_llmsrec.llm.text import history_windows

    _, model, interaction, blocks = native_test_batch(model_name, config_dict)
    rows = []
    start = 0
    with torch.no_grad():
        for size in blocks[:users]:
            block = interaction[torch.arange(start, start + size)]
            start += size
            window = history_windows(block[model.ITEM_SEQ][:1], block[model.ITEM_SEQ_LEN][:1], model.prompt_history_len)[0][0]
            items = block[model.ITEM_ID].tolist()
            user = block[model.USER_ID][0]
            cached = model.listwise_scores(window, items, seeded_generator(model.seed, user), cached=True)
            naive = model.listwise_scores(window, items, seeded_generator(model.seed, user), cached=False)
            difference = (cached - naive).abs()
            rows.append({
                "user": int(user),
                "candidates": len(items),
                "score_range": [float(naive.min()), float(naive.max())],
                "max_abs_difference": float(difference.max()),
                "max_relative_difference": float((difference / naive.abs()).max()),
                "same_order": bool(torch.equal(cached.argsort(), naive.argsort())),
                # the positive is the block's first row; its rank (1 = first) under each path
                "positive_rank": {"cached": int((cached > cached[0]).sum()) + 1, "naive": int((naive > naive[0]).sum()) + 1},
            })
    queue.put({"model": model_name, "users": rows})


def main():
    flags = parser(__doc__)
    flags.add_argument("--teacher_checkpoint", default=None, help="the SASRec teacher (empty: train one and cache it)")
    flags.add_argument("--users", type=int, default=2)
    flags.add_argument("--llm_path", default="smollm2-135m")
    flags.add_argument("--llara_config", default="{}", help="JSON dict of LLaRA config overrides")
    args = flags.parse_args()
    common = start(args)
    overrides = json.loads(args.llara_config)
    settings = {**common, "llm_path": args.llm_path, **overrides}
    if args.teacher_checkpoint:
        settings["teacher_checkpoint"] = os.path.join(REPO, args.teacher_checkpoint)
    report = report_head(args, "llara_agreement.py", [
        f"--teacher_checkpoint={args.teacher_checkpoint}", f"--users={args.users}", f"--llm_path={args.llm_path}",
        f"--llara_config='{args.llara_config}'"])
    report["models"]["LLaRA"] = run_in_child("LLaRA", settings, agreement, args.users)
    out = report_path(args, "llara_agreement")
    write_report(report, out)
    print(json.dumps(report["models"], indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
