"""Amazon Reviews 2023 (McAuley Lab) to RecBole atomic files, filtered as the LLM-SRec paper's data.

    python -m recbole_llmsrec.data.amazon2023 --reviews=Movies_and_TV.jsonl \\
        --meta=meta_Movies_and_TV.jsonl --name=Movies --data_path=dataset

Input: the public per-category files, plain or gzipped JSON lines: ``<Category>.jsonl`` (one review
per line: ``user_id``, ``parent_asin``, ``rating``, ``timestamp`` in milliseconds, ...) and
``meta_<Category>.jsonl`` (one item per line: ``parent_asin``, ``title``, ``description`` (a list of
paragraphs), ...). Items are ``parent_asin``s.

Steps (llmsrec.md §5.4, the paper's ``data_preprocess.py``):

1. Interactions of the same user and item are one, the earliest (as the "last_out" benchmark files).
2. Iterative ``k_core`` filter (5): users and items with at least 5 interactions (the benchmark's
   ``5core``); each user's last interaction is its test target, the one before its validation target.
3. A random share of the users (``user_fraction``; the paper's code used 5% of Movies_and_TV and of
   Electronics, 33% of CDs_and_Vinyl, all of Industrial_and_Scientific, which are the defaults for
   those categories). The sample is drawn with ``seed``, so it is not the paper's own sample.
4. One re-filter pass over the sampled users (not iterated, as in the code): items need more than
   4 interactions among them; users need more than 4 interactions and more than 4 training
   interactions with kept items; a user's validation/test interaction stays only if its item is kept.

Output in ``<data_path>/<name>/``: ``<name>.inter`` (``user_id``, ``item_id``, ``rating``,
``timestamp`` in ms, ordered by user and time), ``<name>.item`` (``item_id``, ``title``, and the
first ``description`` paragraph; tabs and line breaks become spaces), and ``<name>.yaml`` with the
dataset settings for this plugin (item text field, millisecond timestamps). RecBole's leave-one-out
split takes each user's last two interactions for validation and test: for users who kept both
targets in step 4 these are the paper's; for the others (counted in the summary) RecBole moves the
split to their last remaining interactions, where the paper's code left them out of that evaluation.
"""

import argparse
import os
import re

import numpy as np
import pandas as pd

from recbole_llmsrec.cli import user_errors

# share of users the paper's code kept per category (llmsrec.md §5.4, step 2)
PAPER_USER_FRACTION = {
    "Movies_and_TV": 0.05,
    "Electronics": 0.05,
    "CDs_and_Vinyl": 0.33,
    "Industrial_and_Scientific": 1.0,
}
REVIEW_COLUMNS = ["user_id", "parent_asin", "rating", "timestamp"]


def _read_jsonl(path, columns, optional=(), chunksize=500_000):
    """The ``columns`` (and those of ``optional`` it has) of a (gzipped) JSON-lines file, read in
    chunks to bound memory."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist")
    parts = []
    with pd.read_json(path, lines=True, chunksize=chunksize, dtype=False, convert_dates=False) as reader:
        for chunk in reader:
            missing = [column for column in columns if column not in chunk.columns]
            if missing and not chunk.empty:
                raise KeyError(f"{path} has no field {missing} (its fields: {list(chunk.columns)}); is it the "
                               f"Amazon Reviews 2023 layout?")
            parts.append(chunk.reindex(columns=[*columns, *optional]))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=[*columns, *optional])


def k_core(frame, k):
    """Drop users and items with fewer than ``k`` interactions until none is left."""
    while True:
        user_counts = frame.groupby("user_id")["item_id"].transform("size")
        item_counts = frame.groupby("item_id")["user_id"].transform("size")
        keep = (user_counts >= k) & (item_counts >= k)
        if keep.all():
            return frame
        frame = frame[keep]


def paper_refilter(frame, min_count=5):
    """Step 4 of the module docstring on a frame ordered by user and time (``k_core`` applied)."""
    position_from_end = frame.groupby("user_id").cumcount(ascending=False)
    is_train = position_from_end >= 2  # the last is the test target, the one before the validation target
    item_counts = frame.groupby("item_id")["user_id"].transform("size")
    user_counts = frame.groupby("user_id")["item_id"].transform("size")
    item_kept = item_counts >= min_count
    train_kept = (is_train & item_kept).groupby(frame["user_id"]).transform("sum")
    user_kept = (user_counts >= min_count) & (train_kept >= min_count)
    kept = frame[user_kept & item_kept]
    targets = (~is_train)[user_kept & item_kept].groupby(kept["user_id"]).sum()
    return kept, int((targets < 2).sum())


def _clean(text):
    if isinstance(text, list):  # description: a list of paragraphs, the first is kept
        text = next((part for part in text if isinstance(part, str) and part.strip()), "")
    if not isinstance(text, str):
        return ""
    return re.sub(r"\s+", " ", text).strip()


def convert(reviews, meta, name, data_path="dataset", user_fraction=None, seed=0, k=5, min_count=5):
    """Write ``<data_path>/<name>/<name>.{inter,item,yaml}``; returns a summary dict."""
    category = re.sub(r"\.jsonl(\.gz)?$", "", os.path.basename(reviews))
    if user_fraction is None:
        if category in PAPER_USER_FRACTION:
            user_fraction = PAPER_USER_FRACTION[category]
            print(f"user_fraction {user_fraction}: the paper code's share for {category} (--user_fraction changes it)")
        else:
            user_fraction = 1.0
            print(f"user_fraction 1.0: {category} is not one of the paper's categories, so every user is kept "
                  f"(--user_fraction changes it)")
    if not 0 < user_fraction <= 1:
        raise ValueError(f"user_fraction must be in (0, 1], not {user_fraction}")

    frame = _read_jsonl(reviews, REVIEW_COLUMNS).rename(columns={"parent_asin": "item_id"})
    read = len(frame)
    frame["timestamp"] = pd.to_numeric(frame["timestamp"], errors="raise").astype("int64")
    frame = frame.sort_values(["user_id", "timestamp"], kind="stable")
    frame = frame.drop_duplicates(["user_id", "item_id"], keep="first")
    frame = k_core(frame, k)
    core = {"users": frame["user_id"].nunique(), "items": frame["item_id"].nunique(), "interactions": len(frame)}

    users = np.sort(frame["user_id"].unique())
    if user_fraction < 1:
        chosen = np.random.default_rng(seed).choice(len(users), size=int(round(user_fraction * len(users))), replace=False)
        frame = frame[frame["user_id"].isin(users[np.sort(chosen)])]
    frame, incomplete = paper_refilter(frame, min_count)
    if frame.empty:
        raise ValueError("no interaction is left after filtering; lower k or min_count, or raise user_fraction")

    items = _read_jsonl(meta, ["parent_asin"], optional=["title", "description"], chunksize=200_000)
    items = items.drop_duplicates("parent_asin").set_index("parent_asin")
    kept_items = pd.Index(np.sort(frame["item_id"].unique()))
    item_table = pd.DataFrame({
        "item_id:token": kept_items,
        "title:token_seq": [_clean(t) for t in items["title"].reindex(kept_items)],
        "description:token_seq": [_clean(d) for d in items["description"].reindex(kept_items)],
    })

    folder = os.path.join(data_path, name)
    os.makedirs(folder, exist_ok=True)
    inter_table = pd.DataFrame({
        "user_id:token": frame["user_id"].to_numpy(),
        "item_id:token": frame["item_id"].to_numpy(),
        "rating:float": pd.to_numeric(frame["rating"], errors="coerce").to_numpy(),
        "timestamp:float": frame["timestamp"].to_numpy(),
    })
    inter_table.to_csv(os.path.join(folder, f"{name}.inter"), sep="\t", index=False)
    item_table.to_csv(os.path.join(folder, f"{name}.item"), sep="\t", index=False)
    summary = {
        "reviews": read, "5core": core, "user_fraction": user_fraction, "seed": seed,
        "users": int(frame["user_id"].nunique()), "items": len(item_table), "interactions": len(frame),
        "users_without_valid_or_test": incomplete,
        "items_without_title": int((item_table["title:token_seq"] == "").sum()),
    }
    with open(os.path.join(folder, f"{name}.yaml"), "w") as f:
        f.write(
            f"# {name}: Amazon Reviews 2023 {category}, converted by recbole_llmsrec.data.amazon2023\n"
            f"# ({k}-core, user_fraction {user_fraction}, seed {seed}, re-filter at {min_count}): "
            f"{summary['users']} users, {summary['items']} items, {summary['interactions']} interactions.\n"
            f"load_col:\n  inter: [user_id, item_id, timestamp]\n  item: [item_id, title]\n"
            f"item_text_fields: [title]          # the paper's prompts show titles only\n"
            f"normalize_all: False               # prompts show dates: keep the timestamps as they are\n"
            f"timestamp_unit: ms                 # Amazon 2023 timestamps are milliseconds\n"
        )
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reviews", required=True, help="<Category>.jsonl (or .jsonl.gz)")
    parser.add_argument("--meta", required=True, help="meta_<Category>.jsonl (or .jsonl.gz)")
    parser.add_argument("--name", required=True, help="dataset name, e.g. Movies")
    parser.add_argument("--data_path", default="dataset", help="RecBole's data_path; files go to <data_path>/<name>/")
    parser.add_argument("--user_fraction", type=float, default=None,
                        help="share of users kept (default: the paper's for its four categories, else 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the user sample")
    parser.add_argument("--k_core", type=int, default=5)
    parser.add_argument("--min_count", type=int, default=5, help="re-filter threshold (the paper's '> 4')")
    args = parser.parse_args(argv)
    summary = convert(args.reviews, args.meta, args.name, args.data_path, args.user_fraction, args.seed,
                      args.k_core, args.min_count)
    folder = os.path.join(args.data_path, args.name)
    print(f"wrote {folder}/{args.name}.inter, .item, .yaml: {summary}")
    print(f"run: python run_recbole_llmsrec.py --model=LLMSRec --dataset={args.name} --data_path={args.data_path} "
          f"--config_files={folder}/{args.name}.yaml")
    return summary


if __name__ == "__main__":
    with user_errors():
        main()
