"""Sequence-understanding diagnostic (LLM-SRec paper §2.3): does a model care about order?

A trained model is evaluated on the test histories as they are and with each user's history
shuffled (:mod:`recbole_llmsrec.data.shuffle`: item ids permuted, timestamps in place, one fixed
permutation per user). Both evaluations run on the same batches, so the sampled ``uni100``
negatives are identical and the change measures order alone. Reported per scope: the metrics,
their relative change ``shuffled / original - 1``, and the mean cosine similarity between the
user representations computed from the original and the shuffled history (paper Table 5), for
models that expose one:

* ``user_vec``: the vector that scores items: ``f_user(h_U)`` of the LLM retrieval models, the last
  position's output of SASRec/GRU4Rec (O_u), BERT4Rec's output at the appended ``[MASK]``, the
  history vector of LLMSeqSim;
* ``h_U``: the LLM's hidden state at ``[UserOut]`` (LLM retrieval models; the other scoring forms
  of TALLRec, CoLLM, LLaRA and A-LLMRec score without a user vector and get n/a).

Training on shuffled sequences (the paper's other experiment) is ``shuffle_mode: train``; this
module's CLI runs it through the leaderboard with ``--shuffle_mode=train``.

    python -m recbole_llmsrec.evaluation.shuffle --model_file=saved/SASRec-Nov-23-2026_10-00-00.pth
    python -m recbole_llmsrec.evaluation.shuffle --shuffle_mode=train --dataset=ml-100k --models=SASRec,LLMSRec
"""

import os
from logging import getLogger

import numpy as np
import torch
from recbole.data.interaction import Interaction
from recbole.utils import init_logger, init_seed

from recbole_llmsrec.data.shuffle import SHUFFLE_SCOPES, check_shuffle_settings, scope_window, shuffle_histories
from recbole_llmsrec.evaluation.ranking import evaluate_per_user, fixed_batches, full_sort_loader

REPRESENTATIONS = ("user_vec", "h_U")


def relative_change(original, shuffled):
    """``shuffled / original - 1`` per metric (None where the original is 0)."""
    return {name: (shuffled[name] / original[name] - 1) if original[name] else None for name in original}


class HistoryShuffler:
    """Maps an evaluation ``Interaction`` to the same rows with shuffled histories."""

    def __init__(self, config, scope, seed=None, window=None):
        seed = config["shuffle_seed"] if seed is None else seed
        window = config["shuffle_window"] if window is None else window
        check_shuffle_settings("test", scope, window)
        self.seed, self.window = seed, scope_window(scope, window)
        self.uid_field = config["USER_ID_FIELD"]
        self.item_seq_field = config["ITEM_ID_FIELD"] + config["LIST_SUFFIX"]
        self.item_seq_len_field = config["ITEM_LIST_LENGTH_FIELD"]

    def __call__(self, interaction):
        shuffled = Interaction(dict(interaction.interaction))
        shuffled[self.item_seq_field] = shuffle_histories(
            interaction[self.item_seq_field], interaction[self.item_seq_len_field], interaction[self.uid_field],
            self.seed, self.window,
        )
        return shuffled


@torch.no_grad()
def user_representations(model, interaction):
    """The user representations ``model`` exposes for the rows of ``interaction``, by name
    (see the module docstring); an empty dict for models without one."""
    from recbole.model.sequential_recommender.bert4rec import BERT4Rec
    from recbole.model.sequential_recommender.gru4rec import GRU4Rec
    from recbole.model.sequential_recommender.sasrec import SASRec

    from recbole_llmsrec.model.retrieval import LLMRetrievalMixin
    from recbole_llmsrec.model.sequential_recommender.llmseqsim import LLMSeqSim

    item_seq, item_seq_len = interaction[model.ITEM_SEQ], interaction[model.ITEM_SEQ_LEN]
    if isinstance(model, LLMRetrievalMixin) and getattr(model, "scoring", "retrieval") == "retrieval":
        h_u, user_vec = model.user_states(interaction)  # cached by the evaluation pass before
        return {"user_vec": user_vec, "h_U": h_u}
    if isinstance(model, LLMSeqSim):
        return {"user_vec": model.user_vectors(item_seq, item_seq_len)}
    if isinstance(model, BERT4Rec):  # as BERT4Rec.full_sort_predict: a [MASK] after the history
        output = model.forward(model.reconstruct_test_data(item_seq, item_seq_len))
        return {"user_vec": model.gather_indexes(output, item_seq_len - 1)}
    if isinstance(model, (SASRec, GRU4Rec)):
        return {"user_vec": model.forward(item_seq, item_seq_len)}
    return {}


def representation_similarity(trainer, eval_data, shuffler, show_progress=False):
    """Mean cosine similarity of each exposed representation between original and shuffled
    histories over the users of ``eval_data``, and the share of users whose history changed."""
    model, dataset = trainer.model, eval_data._dataset
    model.eval()
    batch_size = trainer.config["eval_batch_size"]
    starts = range(0, len(dataset), batch_size)
    if show_progress:
        from tqdm import tqdm

        starts = tqdm(starts, ncols=100, desc="Representations", leave=False)
    sums, changed = {}, 0
    for start in starts:
        interaction = eval_data.transform(dataset, dataset[np.arange(start, min(start + batch_size, len(dataset)))])
        interaction = interaction.to(trainer.device)
        shuffled = shuffler(interaction)
        changed += int((shuffled[shuffler.item_seq_field] != interaction[shuffler.item_seq_field]).any(1).sum())
        original_repr, shuffled_repr = user_representations(model, interaction), user_representations(model, shuffled)
        for name, vectors in original_repr.items():
            cosine = torch.nn.functional.cosine_similarity(vectors.float(), shuffled_repr[name].float(), dim=-1)
            sums[name] = sums.get(name, 0.0) + float(cosine.sum())
    return {name: sums[name] / len(dataset) if name in sums else None for name in REPRESENTATIONS}, changed / len(dataset)


def shuffle_diagnostic(trainer, eval_data, scopes=SHUFFLE_SCOPES, batches=None, original=None,
                       similarity=True, show_progress=False):
    """Evaluate ``trainer.model`` on ``eval_data`` with original and shuffled histories.

    ``batches`` (from :func:`~recbole_llmsrec.evaluation.ranking.fixed_batches`) and the
    ``original`` per-user result can be passed in when they were computed already. Returns
    ``{scope: {"original", "shuffled", "change", "users_changed", "cosine"}}``.
    """
    config = trainer.config
    if batches is None:
        batches = fixed_batches(eval_data, config["seed"], config["reproducibility"])
    if original is None:
        original = evaluate_per_user(trainer, eval_data, batches, show_progress=show_progress)
    original_mean = original.mean()
    window = config["shuffle_window"]
    if config["prompt_history_len"] is not None and config["prompt_history_len"] != window and "prompt_window" in scopes:
        getLogger().warning(
            f"shuffle_window is {window} but {config['model']} shows prompt_history_len="
            f"{config['prompt_history_len']} items; prompt_window then permutes another window than the prompt's"
        )
    report = {}
    for scope in scopes:
        shuffler = HistoryShuffler(config, scope)
        shuffled = evaluate_per_user(trainer, eval_data, batches, transform=shuffler, show_progress=show_progress,
                                     desc=f"Shuffled ({scope})").mean()
        entry = {"original": original_mean, "shuffled": shuffled, "change": relative_change(original_mean, shuffled)}
        if similarity:
            entry["cosine"], entry["users_changed"] = representation_similarity(trainer, eval_data, shuffler, show_progress)
        report[scope] = entry
    return report


# ---- from a checkpoint ------------------------------------------------------------------------


def load_checkpoint_run(model_file, overrides=None):
    """Rebuild the run that wrote ``model_file`` (its model, dataset and settings) and load the
    trained parameters. Returns ``(config, dataset, train_data, valid_data, test_data, trainer)``."""
    from recbole_llmsrec.compat import load_recbole_checkpoint
    from recbole_llmsrec.config import Config
    from recbole_llmsrec.quick_start import _build

    checkpoint = load_recbole_checkpoint(model_file)
    saved = checkpoint.get("config")
    if saved is None:
        raise ValueError(f"{model_file} holds no RecBole config; pass a checkpoint written by RecBole or this plugin")
    settings = dict(saved.external_config_dict)
    # the diagnostic shuffles test histories itself, and a checkpoint is not resumed here
    if settings.get("shuffle_mode") == "test":
        settings["shuffle_mode"] = "none"
    settings.update(resume_checkpoint=None, **(overrides or {}))
    config = Config(model=saved["model"], dataset=saved["dataset"], config_dict=settings)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    dataset, train_data, valid_data, test_data, _, trainer = _build(config)
    trainer.load_model_checkpoint(model_file)
    trainer.saved_model_file = model_file
    return config, dataset, train_data, valid_data, test_data, trainer


def diagnose_checkpoint(model_file, scopes=SHUFFLE_SCOPES, eval_modes=("uni100", "full"), overrides=None):
    """:func:`shuffle_diagnostic` of a saved checkpoint under each evaluation mode, as a record
    the report writers take (``{"model", "dataset", "shuffle": {mode: {scope: ...}}}``)."""
    config, dataset, _, _, test_data, trainer = load_checkpoint_run(model_file, overrides)
    if not hasattr(dataset, "item_list_length_field"):
        raise ValueError(f"{model_file} holds {config['model']}, which reads no item sequence: there is no order to shuffle")
    loaders = {"uni100": test_data, "full": full_sort_loader(config, test_data)}
    if config["eval_args"]["mode"]["test"] != "uni100" and "uni100" in eval_modes:
        raise ValueError(
            f"{model_file} was tested in {config['eval_args']['mode']['test']} mode; the uni100 rows need "
            f"--eval_args=\"{{'mode': {{'valid': 'uni100', 'test': 'uni100'}}}}\""
        )
    report = {}
    for mode in eval_modes:
        report[mode] = shuffle_diagnostic(trainer, loaders[mode], scopes, similarity=(mode == eval_modes[0]),
                                          show_progress=config["show_progress"])
    return {"model": config["model"], "dataset": config["dataset"], "checkpoint": model_file, "shuffle": report}


# ---- tables and plots ---------------------------------------------------------------------------


def shuffle_table(records):
    """One row per (model, evaluation mode, scope) of the records' ``shuffle`` entries."""
    import pandas as pd

    rows = []
    for record in records:
        for mode, scopes in (record.get("shuffle") or {}).items():
            for scope, entry in scopes.items():
                row = {"model": record["model"], "eval_mode": mode, "scope": scope}
                for metric in ("ndcg@10", "hit@10"):
                    row[f"{metric}"] = entry["original"][metric]
                    row[f"{metric} shuffled"] = entry["shuffled"][metric]
                    row[f"{metric} change"] = entry["change"][metric]
                cosine = entry.get("cosine") or {}
                for name in REPRESENTATIONS:
                    row[f"cos {name}"] = cosine.get(name)
                row["users changed"] = entry.get("users_changed")
                rows.append(row)
    return pd.DataFrame(rows)


def write_shuffle_report(records, folder, name="shuffle", title=None):
    """``<name>.csv``, ``<name>.md`` and ``<name>.png`` (original vs shuffled NDCG@10, the paper's
    Fig. 1 layout) in ``folder``. Returns the table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = shuffle_table(records)
    if table.empty:
        raise ValueError("no shuffle results to report")
    os.makedirs(folder, exist_ok=True)
    table.to_csv(os.path.join(folder, f"{name}.csv"), index=False)
    shown = table.copy()
    for column in shown.columns:
        if column.endswith("change"):
            shown[column] = shown[column].map(lambda v: "n/a" if v is None or v != v else f"{v:+.2%}")
        elif column.startswith("cos"):
            shown[column] = shown[column].map(lambda v: "n/a" if v is None or v != v else f"{v:.4f}")
        elif column == "users changed":
            shown[column] = shown[column].map(lambda v: "" if v is None or v != v else f"{v:.0%}")
    with open(os.path.join(folder, f"{name}.md"), "w") as f:
        if title:
            f.write(f"{title}\n\n")
        f.write(shown.to_markdown(index=False, floatfmt=".4f") + "\n")

    panels = list(table.groupby(["eval_mode", "scope"], sort=False))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4.3), squeeze=False)
    for ax, ((mode, scope), part) in zip(axes[0], panels):
        x, y = part["ndcg@10"].to_numpy(float), part["ndcg@10 shuffled"].to_numpy(float)
        top = max(np.nanmax(x), np.nanmax(y)) * 1.1 or 1.0
        ax.plot([0, top], [0, top], color="grey", linewidth=0.8, linestyle="--")
        ax.scatter(x, y)
        for model, xi, yi in zip(part["model"], x, y):
            ax.annotate(model, (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set(xlim=(0, top), ylim=(0, top), xlabel="NDCG@10, original order", ylabel="NDCG@10, shuffled",
               title=f"{mode}, {scope}")
    fig.suptitle(title or "Shuffled test histories")
    fig.tight_layout()
    fig.savefig(os.path.join(folder, f"{name}.png"), dpi=120)
    plt.close(fig)
    return table


# ---- command line ---------------------------------------------------------------------------


if __name__ == "__main__":  # it lives in the leaderboard, whose models its train mode runs
    from recbole_llmsrec.cli import user_errors
    from recbole_llmsrec.leaderboard import shuffle_main

    with user_errors():
        shuffle_main()
