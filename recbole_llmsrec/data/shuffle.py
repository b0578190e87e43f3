"""Permuting the order of users' histories (the LLM-SRec paper's shuffle experiments, §2.3).

Only item ids move. Timestamps stay where they are, so an LLM prompt keeps its "Item No.k, Time:
date" slot labels in chronological order while the titles and their soft tokens are permuted, as
in the paper. Each user's permutation is fixed by ``(shuffle_seed, user id)``: the same user gets
the same permutation in every model and every run.

Scopes (``shuffle_scope``): ``full_sequence`` permutes every position of a history;
``prompt_window`` permutes only its last ``shuffle_window`` positions (the items an LLM prompt
shows), so the set of items a prompt sees is unchanged.
"""

import numpy as np
import torch

SHUFFLE_MODES = ("none", "train", "test")
SHUFFLE_SCOPES = ("prompt_window", "full_sequence")


def check_shuffle_settings(mode, scope, window):
    if mode not in SHUFFLE_MODES:
        raise ValueError(f"shuffle_mode must be one of {', '.join(SHUFFLE_MODES)}, not {mode!r}")
    if scope not in SHUFFLE_SCOPES:
        raise ValueError(f"shuffle_scope must be one of {', '.join(SHUFFLE_SCOPES)}, not {scope!r}")
    if scope == "prompt_window" and (not isinstance(window, int) or window < 1):
        raise ValueError(f"shuffle_window must be a positive integer with shuffle_scope prompt_window, not {window!r}")


def scope_window(scope, window):
    """How many trailing positions a scope permutes (None: all of them)."""
    return window if scope == "prompt_window" else None


def user_permutation(seed, user, length):
    """The permutation of ``length`` positions for ``user`` (an integer id) under ``seed``."""
    return np.random.default_rng([int(seed), int(user)]).permutation(length)


def shuffle_histories(item_seq, item_seq_len, users, seed, window=None):
    """``item_seq`` with each row's last ``window`` valid positions (all when None) permuted.

    RecBole sequences are left-aligned with trailing padding; padding never moves. Rows of the same
    user and length (the 100 candidate rows of one user in ``uni100``) get the same permutation.
    Returns a new tensor; the input is left as it is.
    """
    width = item_seq.shape[1]
    keys = torch.stack([users.long(), item_seq_len.long()], dim=1).cpu()
    unique_keys, inverse = torch.unique(keys, dim=0, return_inverse=True)
    index = torch.arange(width).repeat(len(unique_keys), 1)
    for row, (user, length) in enumerate(unique_keys.tolist()):
        start = 0 if window is None else max(0, length - window)
        if length - start > 1:
            index[row, start:length] = start + torch.from_numpy(user_permutation(seed, user, length - start))
    return item_seq.gather(1, index[inverse].to(item_seq.device))


def shuffle_training_part(users, eval_per_user, seed, window=None):
    """Permute each user's training interactions in a flat, user-grouped, time-ordered table.

    ``users`` lists the user of every interaction, grouped by user and in time order; the last
    ``eval_per_user(n)`` interactions of a user with ``n`` of them are its validation/test targets
    and stay in place. Returns the row order that permutes the rest (last ``window`` of them, or all).
    """
    users = np.asarray(users)
    order = np.arange(len(users))
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    ends = np.r_[starts[1:], len(users)]
    for start, end in zip(starts, ends):
        n_train = (end - start) - eval_per_user(end - start)
        first = start if window is None else start + max(0, n_train - window)
        last = start + n_train
        if last - first > 1:
            order[first:last] = first + user_permutation(seed, users[start], last - first)
    return order
