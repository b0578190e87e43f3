"""Does A-LLMRec's answer about a user's favourite genres match the genres of that user's history?

For a seeded sample of ml-100k users, a trained ALLMRec checkpoint answers the question through
``generate_text`` (user soft token + titles with item soft tokens, then the question). Genre names
found in the answer are compared with the user's three most frequent history genres (the ``class``
column of ml-100k.item) and, as a control, with the top three genres of another sampled user: an
answer that reads the user should match its own user better than a stranger.

    python benchmarks/allmrec_generation.py --model_file=benchmarks/runs/saved/ALLMRec-...-stage2.pth --users=40

Writes ``benchmarks/results/allmrec_generation_ml-100k.json`` (rates and every answer).
"""

import argparse
import csv
import json
import os
import random
import re
import sys
import time
from collections import Counter
from datetime import datetime, timezone

import pandas as pd

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ml-100k's genre names and the words an answer may use for them
GENRE_PATTERNS = {
    "Action": r"\baction\b", "Adventure": r"\badventures?\b", "Animation": r"\banimat(ion|ed)\b",
    "Children's": r"\bchildren'?s?\b|\bkids?\b|\bfamily\b", "Comedy": r"\bcomed(y|ies)\b|\bcomic\b",
    "Crime": r"\bcrime\b", "Documentary": r"\bdocumentar(y|ies)\b", "Drama": r"\bdramas?\b|\bdramatic\b",
    "Fantasy": r"\bfantasy\b", "Film-Noir": r"\bnoir\b", "Horror": r"\bhorror\b", "Musical": r"\bmusicals?\b",
    "Mystery": r"\bmyster(y|ies)\b", "Romance": r"\broman(ce|tic)\b", "Sci-Fi": r"\bsci-?fi\b|\bscience fiction\b",
    "Thriller": r"\bthrillers?\b", "War": r"\bwar\b", "Western": r"\bwesterns?\b",
}


def genres_in(text):
    return {genre for genre, pattern in GENRE_PATTERNS.items() if re.search(pattern, text, flags=re.IGNORECASE)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_file", required=True)
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--question", default="What are this user's favourite movie genres? Answer in a few words:")
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "allmrec_generation_ml-100k.json"))
    args = parser.parse_args()
    sys.argv = sys.argv[:1]

    from recbole_llmsrec.generate import load_trained_model, user_history

    model, dataset = load_trained_model(args.model_file)
    item_file = os.path.join(dataset.config["data_path"], f"{dataset.dataset_name}.item")
    table = pd.read_csv(item_file, sep="\t", dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE)
    genres_of = dict(zip(table["item_id:token"], table["class:token_seq"].str.split()))

    users = list(dataset.field2id_token[dataset.uid_field][1:])
    rng = random.Random(args.seed)
    sample = rng.sample(users, args.users)
    controls = sample[1:] + sample[:1]  # each user's stranger: the next sampled user

    def top_genres(user, k=3):
        items = [dataset.id2token(dataset.iid_field, item) for item in user_history(dataset, user)]
        counts = Counter(genre for item in items for genre in genres_of.get(item, []) if genre != "unknown")
        return [genre for genre, _ in counts.most_common(k)]

    rows, start = [], time.perf_counter()
    for user, stranger in zip(sample, controls):
        answer = model.generate_text(user_history(dataset, user), args.question, max_new_tokens=args.max_new_tokens)
        named = sorted(genres_in(answer))
        own, other = top_genres(user), top_genres(stranger)
        rows.append({"user": user, "top3_genres": own, "stranger_top3_genres": other, "answer": answer,
                     "named_genres": named, "named_in_own_top3": [g for g in named if g in own],
                     "named_in_stranger_top3": [g for g in named if g in other]})
    seconds = time.perf_counter() - start

    named_total = sum(len(r["named_genres"]) for r in rows)
    report = {
        "model_file": os.path.relpath(args.model_file, REPO),
        "question": args.question,
        "users": len(rows),
        "seed": args.seed,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "answers_naming_a_genre": sum(bool(r["named_genres"]) for r in rows) / len(rows),
        "named_genres": named_total,
        "share_of_named_in_own_top3": sum(len(r["named_in_own_top3"]) for r in rows) / named_total if named_total else None,
        "share_of_named_in_stranger_top3": sum(len(r["named_in_stranger_top3"]) for r in rows) / named_total if named_total else None,
        "answers_with_own_top_genre": sum(bool(r["named_in_own_top3"]) for r in rows) / len(rows),
        "distinct_answers": len({r["answer"] for r in rows}),
        "seconds_per_answer": seconds / len(rows),
        "answers": rows,
    }
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps({k: v for k, v in report.items() if k != "answers"}, indent=1))
    for row in rows[:8]:
        print(row["user"], row["top3_genres"], "->", repr(row["answer"]))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
