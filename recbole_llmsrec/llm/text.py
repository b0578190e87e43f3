"""Item text from a RecBole ``.item`` file, and prompts assembled from cached token ids."""

import csv
import logging
import os
import weakref
from datetime import datetime, timezone
from functools import lru_cache

import pandas as pd

from recbole_llmsrec.llm.backbone import HISTORY_EMB, ITEM_OUT, USER_OUT, USER_REP, pad_prompts

logger = logging.getLogger(__name__)


def item_text_file(config):
    """The ``.item`` file and the ``item_text_fields`` to read item text from, checked without reading
    the rows: the fields are set, the file exists and its header has the item id and every field."""
    name = config["dataset"]
    fields = config["item_text_fields"]
    if not fields:
        raise ValueError(
            f"item_text_fields is not set for dataset {name!r}: name the .item columns holding "
            f"item text in properties/dataset/{name}.yaml (e.g. item_text_fields: [title]) or pass "
            f"--item_text_fields=\"['title']\""
        )
    if isinstance(fields, str):
        fields = [fields]
    path = os.path.join(config["data_path"], f"{name}.item")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"LLM models need item text, but dataset {name!r} has no item file {path}: add the "
            f"atomic file {name}.item with an item_id column and a text column, and name the "
            f"text column in item_text_fields"
        )
    with open(path, encoding=config["encoding"] or "utf-8") as f:
        header = f.readline().rstrip("\r\n")
    columns = [column.split(":")[0] for column in header.split(config["field_separator"])]
    absent = [field for field in [config["ITEM_ID_FIELD"], *fields] if field not in columns]
    if absent:
        raise KeyError(
            f"{path} has no column {absent} (its columns: {columns}); set "
            f"item_text_fields (and ITEM_ID_FIELD) in properties/dataset/{name}.yaml"
        )
    return path, list(fields)


def read_item_text(config, dataset):
    """Raw text of every item, indexed by RecBole's internal item id (index 0, padding, is "").

    The text is read from ``<data_path>/<dataset>.item`` (not RecBole's word ids), built from
    ``item_text_fields`` (and ``item_text_template`` if set). Items whose text is empty or who
    have no row get ``item_text_placeholder`` (one warning counting each kind), or an error when
    that is null. The result is kept with ``dataset`` (and the splits built from it), so the file
    is read and its warnings logged once per dataset.
    """
    path, fields = item_text_file(config)
    stat = os.stat(path)
    key = (path, stat.st_mtime_ns, stat.st_size, tuple(fields), config["item_text_template"],
           config["item_text_placeholder"], config["field_separator"], config["encoding"], config["ITEM_ID_FIELD"])
    read = dataset.__dict__.setdefault("_item_text_read", {})
    if key not in read:
        read[key] = _read_item_text(config, dataset, path, fields)
    return list(read[key])


def _read_item_text(config, dataset, path, fields):
    name = config["dataset"]
    table = pd.read_csv(
        path,
        sep=config["field_separator"],
        dtype=str,
        keep_default_na=False,
        quoting=csv.QUOTE_NONE,
        encoding=config["encoding"] or "utf-8",
        engine="python",
    )
    table.columns = [column.split(":")[0] for column in table.columns]
    iid_field = config["ITEM_ID_FIELD"]

    template = config["item_text_template"]
    token2id = dataset.field2token_id[iid_field]
    texts = [None] * dataset.item_num
    for row in table[[iid_field, *fields]].itertuples(index=False):
        item = token2id.get(row[0])
        if item is None:  # in the .item file but never interacted with: not in the catalogue
            continue
        values = {field: value.strip() for field, value in zip(fields, row[1:])}
        if template:
            text = template.format(**values) if all(values.values()) else ""
        else:
            text = ", ".join(value for value in values.values() if value)
        texts[item] = text.strip()

    placeholder = config["item_text_placeholder"]
    no_row = [item for item in range(1, dataset.item_num) if texts[item] is None]
    empty = [item for item in range(1, dataset.item_num) if texts[item] == ""]

    def examples(items):
        return [dataset.id2token(iid_field, item) for item in items[:5]]

    if (no_row or empty) and placeholder is None:
        problems = []
        if no_row:
            problems.append(f"{len(no_row)} items have no row in {name}.item (e.g. item ids {examples(no_row)})")
        if empty:
            problems.append(f"{len(empty)} items of {name!r} have no text in {fields} (e.g. item ids {examples(empty)})")
        raise ValueError(
            f"{'; '.join(problems)}; fill them in {path}, or set item_text_placeholder to a text that "
            f"stands in for them"
        )
    if no_row:
        logger.warning(
            f"{len(no_row)} items have no row in {name}.item (e.g. item ids {examples(no_row)}): they get the "
            f"placeholder text {placeholder!r} (item_text_placeholder)"
        )
    if empty:
        logger.warning(
            f"{len(empty)} of {dataset.item_num - 1} items have no text in {fields} "
            f"(e.g. {examples(empty)}); they are shown as {placeholder!r} (item_text_placeholder)"
        )
    for item in no_row + empty:
        texts[item] = placeholder
    texts[0] = ""
    return texts


def timestamp_list_field(config, dataset):
    """The ``timestamp_list`` field to date prompt entries with, or None without timestamps.

    Refuses timestamps that RecBole rescaled (``normalize_all`` / ``normalize_field``), which would
    turn every date into 1970-01-01.
    """
    time_field = config["TIME_FIELD"]
    if not time_field or time_field not in dataset.field2type:
        return None
    if config["normalize_all"] or time_field in (config["normalize_field"] or []):
        raise ValueError(
            f"prompts show interaction dates, but RecBole normalises {time_field!r} to [0, 1] here; "
            f"set normalize_all: False (and keep {time_field} out of normalize_field) in "
            f"properties/dataset/{config['dataset']}.yaml, or set prompt_show_dates: False"
        )
    return time_field + config["LIST_SUFFIX"]


def history_windows(item_seq, item_seq_len, window, time_seq=None):
    """The last ``window`` items (and timestamps) of each RecBole sequence, oldest first.

    RecBole sequences are left-aligned with trailing zero padding.
    """
    items_out, times_out = [], []
    seqs = item_seq.tolist()
    lengths = item_seq_len.tolist()
    times = time_seq.tolist() if time_seq is not None else None
    for row, length in enumerate(lengths):
        start = max(0, length - window)
        items_out.append(seqs[row][start:length])
        times_out.append(times[row][start:length] if times is not None else None)
    return items_out, times_out


# (tokenizer, limit, items cut) already warned about: a model that builds several PromptBuilders over
# the same texts (CoLLM: with and without soft tokens) warns once
_cuts_warned = weakref.WeakKeyDictionary()


def _warn_cut_once(tokenizer, limit, lengths, total):
    """One warning counting the item texts cut to ``limit`` tokens (``lengths``: theirs, quotes included)."""
    try:
        warned = _cuts_warned.setdefault(tokenizer, set())
    except TypeError:  # a tokenizer that takes no weak reference: warn every time
        warned = set()
    key = (limit, tuple(lengths))
    if key in warned:
        return
    warned.add(key)
    logger.warning(
        f"{len(lengths)} of {total} item texts are longer than item_text_max_tokens={limit} tokens (the longest: "
        f"{max(lengths)}) and are cut to it in prompts; raise item_text_max_tokens to keep more of them"
    )


class PromptBuilder:
    """Builds LLM-SRec-style prompts (paper Table 2) as token ids, from cached pieces.

    Item texts are tokenised once; the fixed pieces and the "Item No.k, Time: date" labels are
    tokenised once each and cached, so a batch of prompts is only list concatenation. Each history
    entry and each item prompt carries one ``[HistoryEmb]`` placeholder (when ``soft_tokens``)
    for a projected collaborative item embedding.
    """

    USER_PREFIX = "This user has made a series of purchases in the following order: "
    USER_SUFFIX = ". Based on this sequence of purchases, generate user representation token:"
    ITEM_PREFIX = "The item title and item embedding are as follows: "
    ITEM_SUFFIX = ", then generate item representation token:"

    def __init__(self, tokenizer, item_texts, max_item_tokens=64, timestamp_unit="s", soft_tokens=True):
        self.tokenizer = tokenizer
        self.soft_tokens = soft_tokens
        self.history_emb_id = tokenizer.convert_tokens_to_ids(HISTORY_EMB)
        self.user_out_id = tokenizer.convert_tokens_to_ids(USER_OUT)
        self.item_out_id = tokenizer.convert_tokens_to_ids(ITEM_OUT)
        self.user_rep_id = tokenizer.convert_tokens_to_ids(USER_REP)
        if timestamp_unit not in ("s", "ms"):
            raise ValueError(f"timestamp_unit must be s or ms, not {timestamp_unit!r}")
        self.seconds_per_unit = 1.0 if timestamp_unit == "s" else 1e-3
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        # the tokenizer's own leading special tokens (e.g. <|begin_of_text|>), kept as it would add them
        with_specials = tokenizer("a").input_ids
        without = tokenizer("a", add_special_tokens=False).input_ids
        self.bos = with_specials[: len(with_specials) - len(without)] if with_specials[-len(without):] == without else []
        quoted = [f'"{text}"' for text in item_texts]
        encoded = tokenizer(quoted, add_special_tokens=False).input_ids
        self.item_tokens = [self._cut(ids, max_item_tokens) for ids in encoded]
        self.cut_items = [item for item, ids in enumerate(encoded) if len(ids) > max_item_tokens + 1]
        if self.cut_items:
            lengths = [len(encoded[item]) for item in self.cut_items]
            _warn_cut_once(tokenizer, max_item_tokens, lengths, len(item_texts) - 1)
        self._item_prompts = {}

    def _cut(self, ids, limit):
        """A quoted title's first ``limit`` tokens and its closing quote, never ending in half a
        character (byte-level tokenizers split non-ASCII characters over several tokens)."""
        if len(ids) <= limit + 1:
            return ids
        kept = ids[:limit]
        while kept and self.tokenizer.decode(kept).endswith("\ufffd"):
            kept = kept[:-1]
        return kept + ids[-1:]

    @lru_cache(maxsize=None)
    def piece(self, text):
        return tuple(self.tokenizer(text, add_special_tokens=False).input_ids)

    @lru_cache(maxsize=None)
    def _date(self, day):
        return datetime.fromtimestamp(day * 86400, tz=timezone.utc).strftime("%Y-%m-%d")

    def _marker(self):
        return [self.history_emb_id] if self.soft_tokens else []

    def user_prompt(self, items, timestamps=None, user_rep=False):
        """Token ids of one user prompt over ``items`` (oldest first) and their timestamps.

        ``user_rep`` opens the prompt with a ``[UserRep]`` placeholder for a user soft token.
        """
        ids = list(self.bos) + ([self.user_rep_id] if user_rep else []) + list(self.piece(self.USER_PREFIX))
        for k, item in enumerate(items, start=1):
            if k > 1:
                ids += self.piece(",")
            if timestamps is not None:
                day = int(timestamps[k - 1] * self.seconds_per_unit // 86400)
                ids += self.piece(f"Item No.{k}, Time: {self._date(day)}, ")
            else:
                ids += self.piece(f"Item No.{k}, ")
            ids += self.item_tokens[item]
            ids += self._marker()
        ids += self.piece(self.USER_SUFFIX)
        ids.append(self.user_out_id)
        return ids

    def title_list(self, items, markers=True):
        """Token ids of the quoted titles of ``items``, comma-separated, each followed by a
        ``[HistoryEmb]`` placeholder when ``markers``."""
        ids = []
        for k, item in enumerate(items):
            ids += (list(self.piece(", ")) if k else []) + self.item_tokens[item]
            ids += [self.history_emb_id] if markers else []
        return ids

    def item_prompt(self, item):
        """Token ids of the prompt that represents one item (cached)."""
        cached = self._item_prompts.get(item)
        if cached is None:
            cached = (
                list(self.bos) + list(self.piece(self.ITEM_PREFIX)) + self.item_tokens[item]
                + self._marker() + list(self.piece(self.ITEM_SUFFIX)) + [self.item_out_id]
            )
            self._item_prompts[item] = cached
        return cached

    def pad(self, sequences, device=None, left=False):
        """Right-pad (or ``left``-pad) token id lists into ``(input_ids, attention_mask)`` tensors."""
        return pad_prompts(sequences, self.pad_id, device, left)

    history_windows = staticmethod(history_windows)
