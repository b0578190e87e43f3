"""How LLMSRec's time per epoch grows with the number of users and the history shown in the prompt.

Two series on subsets of one dataset, one knob at a time: users (the first N users by id, every
interaction of theirs, history at its default) and prompt history length (all users). For each
setting the script builds LLMSRec and measures

  - ``--steps`` real training steps (median), and RecBole's loader time per batch;
  - the item vectors of the whole catalogue and the user vectors of ``--eval_users`` users;

then gives an epoch estimate: steps per epoch x (step + loader) for training, plus one validation
pass (catalogue items + all users at the measured per-user cost). Settings with at most
``--real_epoch_users`` users also run one real epoch (training and validation), to check the
estimate against a measured epoch.

    python benchmarks/growth.py --dataset=ml-100k --users=100,300,943 --history=5,10,20 --steps=3

Writes ``benchmarks/results/growth_<dataset>.json``.
"""

import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import parser, report_head, report_path, start, write_report  # noqa: E402
from step_floor import build_llmsrec, peak_memory_mb, quick_teacher, sync, time_loader, timed_train_step  # noqa: E402


def user_subset(data_path, dataset, users, workdir):
    """A copy of ``dataset`` with the interactions of its first ``users`` users (by id); its path."""
    import pandas as pd

    source = os.path.join(data_path, dataset)
    target_root = os.path.join(workdir, "subsets", f"{dataset}-u{users}")
    target = os.path.join(target_root, dataset)
    inter = os.path.join(target, f"{dataset}.inter")
    if not os.path.isfile(inter):
        os.makedirs(target, exist_ok=True)
        table = pd.read_csv(os.path.join(source, f"{dataset}.inter"), sep="\t", dtype=str)
        user_column = next(column for column in table.columns if column.startswith("user_id"))
        ids = sorted(table[user_column].unique(), key=lambda u: (len(u), u))[:users]
        table[table[user_column].isin(set(ids))].to_csv(inter + ".tmp", sep="\t", index=False)
        for name in os.listdir(source):
            if not name.endswith(".inter"):
                with open(os.path.join(source, name), "rb") as f, open(os.path.join(target, name), "wb") as g:
                    g.write(f.read())
        os.replace(inter + ".tmp", inter)
    return target_root + os.sep


def measure(settings, steps, eval_users, real_epoch):
    import torch

    config, (_, train_data, valid_data, _, model, trainer) = build_llmsrec(settings)
    device = config["device"]
    loader = time_loader(train_data)
    model.train()
    step_seconds = []
    for index, batch in enumerate(train_data):
        if index == steps:
            break
        step_seconds.append(timed_train_step(model, trainer.optimizer, batch, device))

    model.eval()
    model.clear_cache()
    with torch.no_grad():
        sync(device)
        begin = time.perf_counter()
        model.all_item_vectors()
        sync(device)
        item_seconds = time.perf_counter() - begin
        seen = set()
        begin = time.perf_counter()
        for batch in valid_data:
            interaction = batch[0].to(device)
            model.user_vectors(interaction)
            seen.update(interaction[model.USER_ID].tolist())
            if len(seen) >= eval_users:
                break
        sync(device)
        user_seconds = (time.perf_counter() - begin) / len(seen)
    n_users, n_items = len(train_data._dataset), model.n_items - 1
    step = statistics.median(step_seconds)
    train_estimate = loader["batches"] * (step + loader["seconds_per_batch"])
    eval_estimate = item_seconds + n_users * user_seconds
    result = {
        "users": n_users, "items": n_items, "prompt_history_len": config["prompt_history_len"],
        "train_batch_size": config["train_batch_size"], "steps_per_epoch": loader["batches"],
        "step_seconds_median": step, "step_seconds_all": step_seconds,
        "loader_seconds_per_batch": loader["seconds_per_batch"],
        "item_vectors_seconds": item_seconds, "user_vector_seconds_each": user_seconds, "eval_users_timed": len(seen),
        "train_seconds_per_epoch_estimate": train_estimate,
        "valid_seconds_per_epoch_estimate": eval_estimate,
        "epoch_seconds_estimate": train_estimate + eval_estimate,
    }
    if real_epoch:
        begin = time.perf_counter()
        trainer._train_epoch(train_data, 0, show_progress=config["show_progress"])
        result["train_seconds_real_epoch"] = time.perf_counter() - begin
        begin = time.perf_counter()
        trainer._valid_epoch(valid_data, show_progress=config["show_progress"])
        result["valid_seconds_real_epoch"] = time.perf_counter() - begin
    result["peak_memory_mb"] = peak_memory_mb(device)
    return result


def main():
    flags = parser(__doc__)
    flags.add_argument("--llm_path", default="smollm2-135m")
    flags.add_argument("--users", default="100,300,943", help="user counts (the last one is the base of the history series)")
    flags.add_argument("--history", default="5,10,20", help="prompt_history_len values")
    flags.add_argument("--steps", type=int, default=3, help="training steps timed per setting")
    flags.add_argument("--eval_users", type=int, default=64, help="users whose vectors are timed per setting")
    flags.add_argument("--real_epoch_users", type=int, default=100, help="run a real epoch where there are at most this many users")
    flags.add_argument("--teacher_checkpoint", default="", help="empty: a one-epoch teacher per subset")
    flags.add_argument("--llmsrec_config", default="{}", help="JSON dict of LLMSRec config overrides")
    args = flags.parse_args()
    common = start(args)
    data_path = common.get("data_path")
    if data_path is None:
        from recbole_llmsrec.config import Config

        data_path = os.path.dirname(os.path.normpath(Config(model="LLMSRec", config_dict=common)["data_path"]))
    users = [int(u) for u in args.users.split(",")]
    history = [int(h) for h in args.history.split(",")]
    overrides = json.loads(args.llmsrec_config)
    base = {**common, "llm_path": args.llm_path, **quick_teacher(common, args.teacher_checkpoint), **overrides}

    report = report_head(args, "growth.py", [
        f"--llm_path={args.llm_path}", f"--users={args.users}", f"--history={args.history}", f"--steps={args.steps}",
        f"--eval_users={args.eval_users}", f"--real_epoch_users={args.real_epoch_users}",
        f"--teacher_checkpoint={args.teacher_checkpoint}", f"--llmsrec_config='{args.llmsrec_config}'"])
    del report["models"]
    report.update(llmsrec_overrides=overrides, by_users=[], by_history=[])
    out = report_path(args, "growth")
    plan = [("by_users", n, None) for n in users] + [("by_history", users[-1], h) for h in history]
    for series, n, h in plan:
        settings = {**base, "data_path": user_subset(data_path, args.dataset, n, args.workdir)}
        if h is not None:
            settings["prompt_history_len"] = h
        result = measure(settings, args.steps, args.eval_users, n <= args.real_epoch_users)
        report[series].append(result)
        print(series, json.dumps(result), flush=True)
        write_report(report, out)  # after every setting: a stopped run keeps what it measured
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
