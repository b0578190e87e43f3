"""How much of an untrained LLMSRec's read-outs is shared by every user (or item).

Builds LLMSRec (the packaged SmolLM2 by default, the dataset's cached teacher) and, without any
training, takes the LLM's hidden states at ``[UserOut]`` for two batches of ``--users`` training
users and at ``[ItemOut]`` for two sets of as many items. Per set it reports the mean pairwise
cosine of the raw read-outs, the same after subtracting the set's own mean and after subtracting
the other set's mean (what a running mean learnt on other batches, ``llmsrec_readout_norm: center``,
does), and the share of the norm that is not the mean.

    python benchmarks/readout_cosine.py --dataset=ml-100k

Writes ``benchmarks/results/readout_cosine_<dataset>.json``.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import machine, parser, report_head, report_path, start, write_report  # noqa: E402


def mean_pairwise_cosine(x):
    from torch.nn import functional as F

    cos = F.cosine_similarity(x[:, None], x[None], dim=-1)
    n = len(x)
    return float((cos.sum() - cos.diagonal().sum()) / (n * (n - 1)))


def shared_part(h, other):
    """The cosines of ``h`` raw and centred, and the per-row share of its norm off its mean."""
    mean, other_mean = h.mean(0), other.mean(0)
    return {
        "raw": mean_pairwise_cosine(h),
        "centred_own_mean": mean_pairwise_cosine(h - mean),
        "centred_other_mean": mean_pairwise_cosine(h - other_mean),
        "norm_off_mean_share": float((h - mean).norm(dim=1).mean() / h.norm(dim=1).mean()),
        "norm": float(h.norm(dim=1).mean()),
    }


def main():
    flags = parser(__doc__)
    flags.add_argument("--llm_path", default="smollm2-135m")
    flags.add_argument("--users", type=int, default=40, help="users (and items) per set")
    args = flags.parse_args()
    common = start(args)

    import torch
    from recbole.utils import init_seed

    from recbole_llmsrec.config import Config
    from recbole_llmsrec.quick_start import _build

    report = report_head(args, "readout_cosine.py", [f"--llm_path={args.llm_path}", f"--users={args.users}"])
    report.pop("models")
    report.update(machine=machine(), torch_threads=torch.get_num_threads(), results={})
    for show_dates in (True, False):
        began = time.perf_counter()
        config = Config(model="LLMSRec", config_dict={
            **common, "llm_path": args.llm_path, "prompt_show_dates": show_dates, "train_batch_size": args.users})
        init_seed(config["seed"], config["reproducibility"])
        _, train_data, _, _, model, _ = _build(config)
        model.eval()
        batches = iter(train_data)
        first, second = next(batches), next(batches)
        dates = "timestamp_list" if show_dates else None
        with torch.no_grad():
            users = [model.user_repr(b["item_id_list"], b["item_length"], b[dates] if dates else None)
                     for b in (first, second)]
            items = [model.item_repr(torch.arange(1 + args.users * k, 1 + args.users * (k + 1))) for k in range(2)]
        report["results"][f"dates_{'on' if show_dates else 'off'}"] = {
            "hidden_size": users[0].shape[1],
            "users": shared_part(users[0], users[1]),
            "items": shared_part(items[0], items[1]),
            "seconds": time.perf_counter() - began,
        }
        print(json.dumps(report["results"], indent=1), flush=True)
    out = report_path(args, "readout_cosine")
    write_report(report, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
