"""Writes tiny/tiny.inter and tiny/tiny.item: 60 users, 150 items, a sequential pattern.

Each user walks the catalogue in steps of one or two items from a random start, so the next
item is predictable from the order of the history (and not from its set alone).
Run from this folder: python make_tiny.py
"""

import random

GENRES = ["Action", "Comedy", "Drama", "Horror", "Romance"]


def main():
    rng = random.Random(7)
    n_items, n_users = 150, 60
    with open("tiny/tiny.item", "w", encoding="utf-8") as f:
        f.write("item_id:token\ttitle:token_seq\tgenre:token\n")
        for item in range(1, n_items + 1):
            title = f"Film {item}" if item != 13 else "Caf\u00e9 \u00fcber \u6771\u4eac"
            f.write(f"{item}\t{title}\t{GENRES[item % len(GENRES)]}\n")
    with open("tiny/tiny.inter", "w", encoding="utf-8") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for user in range(1, n_users + 1):
            item, step = rng.randrange(n_items), 1 + user % 2
            start = 880000000 + rng.randrange(10**7)
            for k in range(rng.randrange(8, 16)):
                f.write(f"{user}\t{item + 1}\t{start + 86400 * k}\n")
                item = (item + step) % n_items


if __name__ == "__main__":
    main()
