"""Ask a trained model about a user in words (A-LLMRec's natural-language output).

    python -m recbole_llmsrec.generate --model_file=saved/ALLMRec-Nov-23-2026_10-00-00-stage2.pth --user=196
    python -m recbole_llmsrec.generate --model_file=... --items=242,302,377 --question="Which genres does this user like?"

The model is rebuilt from the checkpoint's own configuration (same dataset, same split, same
LLM), its trained parameters are loaded, and its ``generate_text`` answers the question about the
user's history: the user's interactions in time order (``--user``, a user id of the dataset), or
the given items (``--items``, item ids of the dataset, oldest first).
"""

import argparse
import logging

import torch
from recbole.data import data_preparation
from recbole.utils import init_seed

from recbole_llmsrec.cli import UserError, user_errors
from recbole_llmsrec.compat import load_recbole_checkpoint
from recbole_llmsrec.data import create_dataset
from recbole_llmsrec.utils import get_model

DEFAULT_QUESTION = "What are this user's favourite genres? Answer in a few words:"


def load_trained_model(model_file):
    """The model a checkpoint was written by, with its trained parameters, and its full dataset."""
    checkpoint = load_recbole_checkpoint(model_file)
    config = checkpoint["config"]
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, _, _ = data_preparation(config, dataset)
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    missing = set(checkpoint["state_dict"]) - set(dict(model.named_parameters()))
    if missing:
        raise ValueError(f"{model_file} holds parameters {sorted(missing)[:5]} that {config['model']} does not have")
    model.load_state_dict(checkpoint["state_dict"], strict=False)
    model.eval()
    return model, dataset


def user_history(dataset, user):
    """Internal item ids of ``user`` (a user id token of the dataset), in time order."""
    uid_field, iid_field, time_field = dataset.uid_field, dataset.iid_field, dataset.time_field
    try:
        uid = dataset.token2id(uid_field, str(user))
    except ValueError as err:
        raise ValueError(f"user {user!r} is not in dataset {dataset.dataset_name}") from err
    inter = dataset.inter_feat
    rows = (inter[uid_field] == uid).nonzero().squeeze(1)
    if time_field and time_field in inter:
        rows = rows[torch.argsort(inter[time_field][rows], stable=True)]
    return inter[iid_field][rows].tolist()


def item_ids(dataset, tokens):
    try:
        return [int(dataset.token2id(dataset.iid_field, str(token))) for token in tokens]
    except ValueError as err:
        raise ValueError(f"{err}: --items takes item ids of dataset {dataset.dataset_name}") from err


def describe(model_file, question=DEFAULT_QUESTION, user=None, items=None, max_new_tokens=None):
    """The model's answer to ``question`` about a user (``user`` id, or ``items`` ids oldest first)."""
    if (user is None) == (items is None):
        raise ValueError("give either a user id or a list of item ids")
    model, dataset = load_trained_model(model_file)
    if not hasattr(model, "generate_text"):
        raise UserError(f"{type(model).__name__} cannot answer in words; models that can: ALLMRec")
    history = user_history(dataset, user) if user is not None else item_ids(dataset, items)
    return model.generate_text(history, question, max_new_tokens=max_new_tokens)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_file", required=True, help="a checkpoint written by training (e.g. ALLMRec's -stage2.pth)")
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="a user id of the checkpoint's dataset")
    who.add_argument("--items", help="comma-separated item ids, oldest first")
    parser.add_argument("--question", default=DEFAULT_QUESTION)
    parser.add_argument("--max_new_tokens", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    items = args.items.split(",") if args.items else None
    print(describe(args.model_file, args.question, user=args.user, items=items, max_new_tokens=args.max_new_tokens))


if __name__ == "__main__":
    with user_errors():
        main()
