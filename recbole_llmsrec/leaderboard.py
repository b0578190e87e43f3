"""Leaderboard: every listed model on one dataset, with one split, seed and evaluation.

    python -m recbole_llmsrec.leaderboard --dataset=ml-100k --models=SASRec,BERT4Rec,LLMSRec
    python -m recbole_llmsrec.leaderboard --dataset=ml-100k --epochs=20 \\
        --model_config='{"LLMSRec": {"epochs": 1, "prompt_show_dates": false}}'

Each model is trained once (RecBole's trainer, early stopping on validation) and its best
checkpoint is tested twice on the same test split: ``uni100`` (the target among 100 sampled
negatives, 101 candidates; with ``eval_neg_exclude: history``, the default, no negative is an item
of the user's history, as in the LLM-SRec code; the negatives are drawn after resetting RecBole's
seed, so every model ranks the same candidates) and full ranking. Every record names its
candidate protocol (``candidates``). Per model it also reports warm/cold target items and, unless
``--shuffle_scopes=none``, the shuffled-history diagnostic (:mod:`recbole_llmsrec.evaluation.shuffle`;
skipped for models that read no sequence, such as ``Pop``).

Every model runs in a process of its own: its memory (an LLM) is returned when it ends, RecBole's
global state (seeds, logger) starts fresh, and a model that fails is reported while the others go
on. A finished model leaves ``<results_dir>/<dataset>/runs/<Model>-<key>.json``; the key covers
every resolved setting that changes the result (the model's and the dataset's YAML included), the
dataset files' contents and the diagnostics asked for, so a later call with the same settings
reads it instead of training again (``--rerun=Model`` forces a new run).

Writes ``leaderboard.csv`` (model, eval_mode, ndcg@10, hit@10, ndcg@20, hit@20, train_seconds,
trainable_params, best_epoch, converged), ``leaderboard.md``, ``leaderboard.png``,
``warm_cold.csv``/``.md`` and ``shuffle.csv``/``.md``/``.png`` in ``<results_dir>/<dataset>/``. ``train_seconds`` is the wall time of
``Trainer.fit`` (training epochs and their validation); building the model (loading an LLM,
training a teacher, embedding item texts) is ``setup_seconds`` in the run's JSON and the Markdown.

The training rule: every model trains until early stopping ends it (``stopping_step`` + 1 validations
in a row without a new best ``valid_metric``; a validation every ``eval_step`` epochs, or
``valid_per_epoch`` times an epoch) or until ``epochs``, whichever comes first. Only the first is
convergence: a model that ran out of epochs while it was still improving within its patience window
is short of what it can do, and its row says so. Each record keeps the rule that produced it (``training``: epochs_max,
stopping_step, valid_per_epoch, eval_step, learning_rate, best_epoch, validations, epochs_run,
stopped_by, converged; see :func:`training_outcome`); a staged trainer's (A-LLMRec, CoLLM) fields are
per stage, and it converged only if every stage it trained stopped early (a stage loaded from a
checkpoint counts as given). Models with nothing to train (LLMSeqSim; RecBole's Pop, which counts in
one pass) are ``training-free``. The tables add ``best_epoch`` and ``converged`` ("yes",
"no: max epochs", "no: no validation", "training-free"; "unknown" for records written before the
rule was kept), and ``leaderboard.md`` names every model that did not converge, with its epochs.

Before it trains anything, the leaderboard logs an estimate per model still to run and their total:
at most ``epochs`` (per stage) at the median seconds per training epoch of the model's most recent
earlier record on the dataset in the runs folder (any settings), plus this run's validations at that
record's median seconds per validation, plus that record's setup and test time ("no earlier run to
estimate from" without one). After each model it logs the models left and their estimated time.

Other ``--key=value`` flags set that config key for every model (values read as YAML, as in
``run_hyper.py``); ``--model_config`` sets keys for single models and wins over them.
"""

import argparse
import glob
import hashlib
import json
import multiprocessing
import os
import platform
import resource
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timezone
from logging import getLogger

from recbole_llmsrec.cli import UserError, config_flags, user_errors

COLUMNS = ["model", "eval_mode", "ndcg@10", "hit@10", "ndcg@20", "hit@20", "train_seconds", "trainable_params",
           "best_epoch", "converged"]
EVAL_MODES = ("uni100", "full")
# resolved settings that do not change a result: where things are written, how much is printed
_NOT_IN_KEY = {
    "checkpoint_dir", "show_progress", "state", "log_wandb", "wandb_project", "save_dataset", "save_dataloaders",
    "dataset_save_path", "dataloaders_save_path", "data_path", "llm_cache_dir", "text_emb_cache_dir",
    "resume_checkpoint", "save_latest_checkpoint", "gpu_id", "worker", "verbose", "local_rank", "nproc", "offset", "ip", "port", "world_size",
}


def default_models():
    """RecBole's Pop (the floor every model must clear), SASRec and BERT4Rec, then this plugin's models."""
    from recbole_llmsrec.utils import plugin_model_names

    return ["Pop", "SASRec", "BERT4Rec"] + plugin_model_names()


def is_sequential(model_name):
    """Whether ``model_name`` reads a user's item sequence (Pop, a general model, does not)."""
    from recbole.utils import ModelType

    from recbole_llmsrec.utils import get_model

    return get_model(model_name).type == ModelType.SEQUENTIAL


def candidate_protocol(config):
    """How the sampled test candidates were drawn: ``{"mode", "negatives", "candidates",
    "negatives_exclude"}``."""
    from recbole_llmsrec.data.sampling import eval_neg_exclude

    mode = config["eval_args"]["mode"]["test"]
    negatives = config["test_neg_sample_args"]["sample_num"]
    return {"mode": mode, "negatives": negatives, "candidates": negatives + 1,
            "negatives_exclude": eval_neg_exclude(config)}


def protocol_note(records):
    """One line for the tables: the sampled candidates of ``records`` (and a warning if they differ)."""
    text = {
        "history": "no negative is an item of the user's history (train, valid, test; eval_neg_exclude: history)",
        "recbole": "RecBole's sampler: a negative can be an item of the user's history (eval_neg_exclude: recbole)",
    }
    protocols = {}
    for record in records:
        # records written before the field existed were sampled by RecBole's sampler
        protocol = record.get("candidates") or {"mode": "uni100", "negatives": 100, "candidates": 101,
                                                 "negatives_exclude": "recbole"}
        protocols.setdefault(json.dumps(protocol, sort_keys=True), []).append(record["model"])
    lines = []
    for key, models in protocols.items():
        protocol = json.loads(key)
        line = (f"{protocol['mode']}: the target among {protocol['negatives']} sampled negatives "
                f"({protocol['candidates']} candidates); {text[protocol['negatives_exclude']]}")
        lines.append(line if len(protocols) == 1 else f"{line}: {', '.join(models)}")
    if len(protocols) > 1:
        lines.insert(0, "WARNING: these models were tested on different candidates; their uni100 rows do not compare")
    return "\n\n".join(lines)


def _dataset_fingerprint(config):
    """A hash of the dataset's atomic files (their names and contents)."""
    folder = os.path.join(config["data_path"])
    files = sorted(glob.glob(os.path.join(folder, f"{config['dataset']}.*")))
    if not files:
        raise FileNotFoundError(
            f"dataset {config['dataset']!r} has no atomic files in {folder} (RecBole reads "
            f"<data_path>/<name>/<name>.inter); set data_path to the folder that holds {config['dataset']}/, "
            f"or fetch it (ml-1m: python -m recbole_llmsrec.data.fetch_ml1m)"
        )
    digest = hashlib.sha1()
    for path in files:
        digest.update(os.path.basename(path).encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def run_settings(model, config_dict, shuffle_scopes=()):
    """The resolved settings of ``model`` that change its record, and their key (12 hex digits)."""
    from recbole_llmsrec.config import Config

    config = Config(model=model, config_dict=config_dict)
    settings = {
        key: value for key, value in sorted(config.final_config_dict.items()) if key not in _NOT_IN_KEY
    }
    settings["dataset_files"] = _dataset_fingerprint(config)
    settings["shuffle_diagnostic_scopes"] = list(shuffle_scopes)
    text = json.dumps(settings, sort_keys=True, default=str)
    return config, json.loads(text), hashlib.sha1(text.encode()).hexdigest()[:12]


def _git_commit():
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.abspath(__file__)), timeout=10)
        return done.stdout.strip() or None
    except OSError:
        return None


# ---- the training rule ------------------------------------------------------------------------

# how a training may end and still count as converged (a stage loaded from a checkpoint is taken as given)
CONVERGED_BY = ("early stopping", "training-free", "loaded from checkpoint")


def stopping_reason(history, stopping_step, trained=True, cur_step=None):
    """Why one training (one ``fit``, or one stage of a staged trainer) ended:

    * ``"training-free"``: nothing was trained (``trained`` False);
    * ``"no validation"``: nothing validated it, so nothing could stop it before its last epoch;
    * ``"early stopping"``: its last ``stopping_step`` + 1 validations brought no new best (RecBole's
      ``early_stopping`` stops once ``cur_step`` > ``stopping_step``): converged;
    * ``"max epochs"``: it ran out of epochs with a new best within that window: not converged.

    ``history``: its validations in order, dicts with ``best`` (a new best, so checkpointed), as in
    ``ScheduledTrainer.valid_history``. ``cur_step``: the trainer's count of validations since its best
    after ``fit``, where known; it wins because it also counts those before a resumed run.
    """
    if not trained:
        return "training-free"
    if not history:
        return "no validation"
    if cur_step is None:
        bests = [entry["best"] for entry in history]
        cur_step = bests[::-1].index(True) if True in bests else len(bests)
    return "early stopping" if cur_step > stopping_step else "max epochs"


def replay_early_stopping(validations, best, cur_step, stopping_step, bigger=True):
    """A validation history (:func:`stopping_reason`) of a trainer that keeps none, RecBole's: its
    ``validations`` (epochs trained, valid score) replayed through RecBole's ``early_stopping`` from the
    trainer's ``best`` score and ``cur_step`` before ``fit``, so each is a new best exactly when it was one."""
    from recbole.utils import early_stopping

    history = []
    for epoch, score in validations:
        best, cur_step, _, new_best = early_stopping(score, best, cur_step, max_step=stopping_step, bigger=bigger)
        history.append({"epoch": float(epoch), "valid_score": score, "best": new_best})
    return history


def best_epoch(history):
    """Epochs trained at the last new best of ``history`` (fractional when validated within epochs); None
    without one (no validation, or the best came before a resumed run)."""
    bests = [entry["epoch"] for entry in history if entry["best"]]
    return bests[-1] if bests else None


def training_outcome(history, stopping_step, trained=True, cur_step=None, stages=None):
    """``best_epoch``, ``validations``, ``stopped_by`` (:func:`stopping_reason`) and ``converged`` of a
    training with the validation ``history``. With ``stages`` (stage name -> whether it was loaded from a
    checkpoint instead of trained), the first three are per stage, from the entries naming their
    ``stage``, and it converged only if every stage did."""
    if stages is None:
        stopped_by = stopping_reason(history, stopping_step, trained, cur_step)
        return {"best_epoch": best_epoch(history) if trained else None, "validations": len(history), "stopped_by": stopped_by,
                "converged": stopped_by in CONVERGED_BY}
    parts = {stage: [entry for entry in history if entry.get("stage") == stage] for stage in stages}
    stopped_by = {stage: "loaded from checkpoint" if loaded else stopping_reason(parts[stage], stopping_step)
                  for stage, loaded in stages.items()}
    return {"best_epoch": {stage: best_epoch(part) for stage, part in parts.items()},
            "validations": {stage: len(part) for stage, part in parts.items()},
            "stopped_by": stopped_by, "converged": all(reason in CONVERGED_BY for reason in stopped_by.values())}


def training_record(trainer, config, history):
    """The rule that trained the model of ``trainer`` after its ``fit``, and how it ended (a record's
    ``training``); ``history``: its validations in order (see :func:`stopping_reason`)."""
    from recbole.trainer import TraditionalTrainer

    from recbole_llmsrec.trainer import StagedTrainer, TrainingFreeTrainer

    rule = {"stopping_step": trainer.stopping_step, "valid_per_epoch": getattr(trainer, "valid_per_epoch", 1),
            "eval_step": config["eval_step"]}
    if isinstance(trainer, StagedTrainer):  # each stage has its own epochs, learning rate and early stopping
        settings = {stage: trainer.model.stage_settings(stage) for stage in trainer.stages}
        rule.update(epochs_max={stage: s["epochs"] for stage, s in settings.items()},
                    learning_rate={stage: s["learning_rate"] for stage, s in settings.items()},
                    epochs_run={stage: len(trainer.stage_train_loss.get(stage, {})) for stage in settings})
        return {**rule, **training_outcome(history, trainer.stopping_step,
                                           stages={stage: bool(s.get("checkpoint")) for stage, s in settings.items()})}
    # nothing learnt: LLMSeqSim; RecBole's memory-based models (Pop) count items in one pass whatever epochs is
    free = isinstance(trainer, (TrainingFreeTrainer, TraditionalTrainer))
    rule.update(epochs_max=0 if isinstance(trainer, TrainingFreeTrainer) else trainer.epochs,
                learning_rate=None if free else trainer.learning_rate, epochs_run=len(trainer.train_loss_dict))
    return {**rule, **training_outcome(history, trainer.stopping_step, trained=not free, cur_step=trainer.cur_step)}


def converged_label(training):
    """The ``converged`` cell of a record's ``training``: "yes", "no: <why>" (per stage where staged),
    "training-free", or "unknown" for a record written before the rule was kept."""
    if not training:
        return "unknown"
    reasons = training["stopped_by"] if isinstance(training["stopped_by"], dict) else {None: training["stopped_by"]}
    if set(reasons.values()) == {"training-free"}:
        return "training-free"
    missed = [reason if stage is None else f"{reason} in {stage}"
              for stage, reason in reasons.items() if reason not in CONVERGED_BY]
    return "no: " + ", ".join(missed) if missed else "yes"


def _epochs_text(value):
    if isinstance(value, dict):  # per stage
        return ", ".join(f"{stage} {_epochs_text(epoch) or '-'}" for stage, epoch in value.items())
    return "" if value is None else f"{value:g}"


def convergence_notes(records):
    """Paragraphs for ``leaderboard.md``: the rule, a line per model that did not converge (with its
    epochs), and the models whose records do not say."""
    notes = ["converged: yes when early stopping ended training (valid_metric brought no new best for "
             "stopping_step + 1 validations in a row); no: max epochs when it ran out of epochs while still "
             "improving within that window, so its row may be short of what the model can do."]
    missed = []
    for record in records:
        training = record.get("training")
        if not training or training["converged"]:
            continue
        staged = isinstance(training["stopped_by"], dict)
        parts = []
        for stage in training["stopped_by"] if staged else [None]:
            rule = {name: training.get(name, {}).get(stage) if staged else training.get(name)
                    for name in ("stopped_by", "epochs_run", "epochs_max", "best_epoch")}
            if rule["stopped_by"] in CONVERGED_BY:
                continue
            parts.append(("" if stage is None else f"{stage}: ")
                         + f"{rule['stopped_by']}, {rule['epochs_run']} of at most {rule['epochs_max']} epochs"
                         + ("" if rule["best_epoch"] is None else f", best validation at epoch {rule['best_epoch']:g}"))
        missed.append(f"- {record['model']} did not converge: {'; '.join(parts)}")
    if missed:
        notes.append("\n".join(missed))
    unknown = [record["model"] for record in records if not record.get("training")]
    if unknown:
        notes.append(f"converged unknown (recorded before the training rule was kept; --rerun tells): {', '.join(unknown)}")
    return "\n\n".join(notes)


# ---- what a model will cost ---------------------------------------------------------------------


def earlier_record(folder, model_name, dataset):
    """The most recent record of ``model_name`` on ``dataset`` in the runs ``folder``, whatever its
    settings; None without one."""
    found = []
    for path in glob.glob(os.path.join(folder, f"{model_name}-*.json")):
        if path.endswith(".settings.json"):
            continue
        try:
            with open(path) as f:
                record = json.load(f)
        except (OSError, ValueError):  # unreadable: it says nothing about the cost
            continue
        if record.get("model") == model_name and record.get("dataset") == dataset:
            found.append((record.get("date", ""), os.path.getmtime(path), record))
    return max(found, key=lambda entry: entry[:2])[2] if found else None


def estimate_seconds(config, earlier):
    """The most seconds the run of ``config`` may take, as measured by an ``earlier`` record of its model
    and dataset, and how: per stage, ``epochs`` at that record's median seconds per training epoch and
    this run's validations at its median seconds per validation, plus its setup and test time."""
    from statistics import median

    from recbole.trainer import TraditionalTrainer

    from recbole_llmsrec.trainer import ScheduledTrainer, StagedTrainer, TrainingFreeTrainer, duration
    from recbole_llmsrec.utils import get_trainer

    trainer_class = get_trainer(config["MODEL_TYPE"], config["model"])
    epoch_seconds = earlier.get("train_seconds_per_epoch_all") or []
    if not epoch_seconds and earlier.get("epochs_run"):  # written before epochs were timed: validations included
        epoch_seconds = [earlier["train_seconds"] / earlier["epochs_run"]]
    training = earlier.get("training") or {}
    if issubclass(trainer_class, StagedTrainer) and not isinstance(training.get("epochs_run"), dict) and epoch_seconds:
        # written before stages were told apart: the median of two stages' epochs would be the cheaper one's
        epoch_seconds = [sum(epoch_seconds) / len(epoch_seconds)]
    measured = {None: (epoch_seconds, earlier.get("valid_seconds_all") or [])}
    if isinstance(training.get("epochs_run"), dict):  # a staged record: a stage's epochs cost their own
        start = 0
        for stage, count in training["epochs_run"].items():
            measured[stage] = (epoch_seconds[start:start + count],
                               [entry["valid_seconds"] for entry in earlier.get("valid_history", [])
                                if entry.get("stage") == stage and "valid_seconds" in entry])
            start += count

    eval_step = config["eval_step"]
    per_epoch = (config["valid_per_epoch"] or 1) if issubclass(trainer_class, ScheduledTrainer) else 1

    def validations(epochs):
        if eval_step <= 0 or epochs <= 0:
            return 0
        return epochs * per_epoch if per_epoch > 1 else epochs // min(eval_step, epochs)

    if issubclass(trainer_class, TrainingFreeTrainer):
        plan = {None: (0, 1)}  # (epochs, validations)
    elif issubclass(trainer_class, TraditionalTrainer):
        plan = {None: (1, 1)}
    elif issubclass(trainer_class, StagedTrainer) and isinstance(training.get("epochs_max"), dict):
        stages = list(training["epochs_max"])
        plan = {}
        for stage in stages:
            # the last stage trains for epochs; A-LLMRec and CoLLM name an earlier stage's own settings
            # <model>_<stage>_epochs and _checkpoint (else: as in the earlier run)
            prefix = f"{config['model'].lower()}_{stage}"
            epochs = (config["epochs"] if stage == stages[-1] else 0 if config[f"{prefix}_checkpoint"]
                      else config[f"{prefix}_epochs"] if config[f"{prefix}_epochs"] is not None
                      else training["epochs_max"][stage])
            plan[stage] = (epochs, validations(epochs))
    else:
        plan = {None: (config["epochs"], validations(config["epochs"]))}

    def seconds_each(values, fallback):
        return median(values) if values else median(fallback) if fallback else 0.0

    total, parts = 0.0, []
    for stage, (epochs, checks) in plan.items():
        trained, validated = measured.get(stage, measured[None])
        epoch, check = seconds_each(trained, measured[None][0]), seconds_each(validated, measured[None][1])
        total += epochs * epoch + checks * check
        done = [f"up to {epochs} epoch{'s' if epochs != 1 else ''} of {duration(epoch)}"] if epochs else []
        if checks and (validated or measured[None][1]):  # else untimed (in the epochs of an old record)
            done.append(f"{checks:g} validation{'s' if checks != 1 else ''} of {duration(check)}")
        parts.append(("" if stage is None else f"{stage}: ") + (", ".join(done) or "nothing to train"))
    fixed = (earlier.get("setup_seconds") or 0.0) + sum((earlier.get("eval_seconds") or {}).values())
    total += fixed
    return total, f"{'; '.join(parts)}; setup and test {duration(fixed)} (as its run of {earlier.get('date', '?')})"


# ---- one model (in its own process) -----------------------------------------------------------


def train_and_evaluate(model_name, config_dict, shuffle_scopes=()):
    """Train ``model_name`` and test its best checkpoint in both evaluation modes; returns the
    run's record (metrics, warm/cold, shuffle diagnostic, cost)."""
    import torch
    from recbole.utils import init_logger, init_seed

    from recbole_llmsrec.config import Config
    from recbole_llmsrec.evaluation.popularity import warm_cold
    from recbole_llmsrec.evaluation.ranking import evaluate_per_user, fixed_batches, full_sort_loader
    from recbole_llmsrec.evaluation.shuffle import shuffle_diagnostic
    from recbole_llmsrec.quick_start import _build

    config = Config(model=model_name, config_dict=config_dict)
    if config["eval_args"]["mode"]["test"] != "uni100":
        raise ValueError(
            f"the leaderboard tests every model in uni100 and in full ranking itself; leave "
            f"eval_args.mode.test at uni100 (it is {config['eval_args']['mode']['test']!r})"
        )
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    show_progress = config["show_progress"]

    start = time.perf_counter()
    dataset, train_data, valid_data, test_data, model, trainer = _build(config)
    setup_seconds = time.perf_counter() - start
    epoch_seconds, valid_seconds = [], []
    train_epoch, valid_epoch = trainer._train_epoch, trainer._valid_epoch

    def timed(method, seconds):
        def wrapped(*args, **kwargs):
            began = time.perf_counter()
            result = method(*args, **kwargs)
            seconds.append(time.perf_counter() - began)
            return result

        return wrapped

    validations = []  # (epochs trained, valid score) of each validation: RecBole's trainers keep no history
    timed_valid_epoch = timed(valid_epoch, valid_seconds)

    def scored(*args, **kwargs):
        score, result = timed_valid_epoch(*args, **kwargs)
        validations.append((trainer.start_epoch + len(epoch_seconds), float(score)))
        return score, result

    trainer._train_epoch = timed(train_epoch, epoch_seconds)
    trainer._valid_epoch = scored
    best, since_best = trainer.best_valid_score, trainer.cur_step  # where early stopping starts (resumed: not afresh)
    start = time.perf_counter()
    _, best_valid_result = trainer.fit(train_data, valid_data, saved=True, show_progress=show_progress)
    train_seconds = time.perf_counter() - start
    history = getattr(trainer, "valid_history", None)
    if history is None:  # RecBole's own trainers
        history = replay_early_stopping(validations, best, since_best, trainer.stopping_step, trainer.valid_metric_bigger)
    trainer.load_model_checkpoint(trainer.saved_model_file)
    # what training changed: a staged trainer's checkpoint names every stage's parameters, while
    # requires_grad only flags the last stage's
    named = getattr(trainer, "checkpoint_parameter_names", None)
    trained = named() if named else {name for name, p in model.named_parameters() if p.requires_grad}

    # the same negatives for every model: RecBole's random state is reset before they are drawn
    batches = fixed_batches(test_data, config["seed"], config["reproducibility"])
    start = time.perf_counter()
    per_user = {"uni100": evaluate_per_user(trainer, test_data, batches, show_progress=show_progress)}
    eval_seconds = {"uni100": time.perf_counter() - start}
    full_data = full_sort_loader(config, test_data)
    start = time.perf_counter()
    full_error = None
    try:
        per_user["full"] = evaluate_per_user(trainer, full_data, show_progress=show_progress)
        eval_seconds["full"] = time.perf_counter() - start
    except ValueError as err:  # a model that cannot rank the whole catalogue says why (e.g. scoring: native)
        full_error = str(err)
        getLogger().warning(f"{model_name}: no full-ranking row: {full_error}")

    record = {
        "model": model_name,
        "dataset": config["dataset"],
        "candidates": candidate_protocol(config),  # the uni100 row's: sampled negatives and what they avoid
        "results": {mode: result.mean() for mode, result in per_user.items()},
        "full_error": full_error,
        "users": {mode: len(result) for mode, result in per_user.items()},
        "warm_cold": {
            mode: warm_cold(config, dataset, valid_data._dataset, test_data._dataset, result)
            for mode, result in per_user.items()
        },
        "best_valid": {key: float(value) for key, value in (best_valid_result or {}).items()},
        "train_seconds": train_seconds,
        "setup_seconds": setup_seconds,
        "eval_seconds": eval_seconds,
        "epochs_run": len(epoch_seconds),
        # per training epoch and per validation pass, in order (a staged trainer's stages one after another)
        # (a trainer that validates inside its epochs, valid_per_epoch > 1, times them without those validations)
        "train_seconds_per_epoch_all": getattr(trainer, "epoch_train_seconds", None) or epoch_seconds,
        "valid_seconds_all": valid_seconds,
        # every validation in order (LLM trainers: fractional epoch, lr, loss terms, seconds)
        "valid_history": history,
        "training": training_record(trainer, config, history),  # the rule, and whether it converged
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "trainable_params": sum(p.numel() for name, p in model.named_parameters() if name in trained),
        "total_params": sum(p.numel() for p in model.parameters()),
        "checkpoint": os.path.relpath(trainer.saved_model_file),  # records travel between checkouts
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}, "
                   f"{'GPU ' + torch.cuda.get_device_name() if config['use_gpu'] and torch.cuda.is_available() else 'CPU'}",
        "commit": _git_commit(),
    }
    if shuffle_scopes and not is_sequential(model_name):
        record["shuffle_skipped"] = f"{model_name} reads no item sequence, so there is no history order to shuffle"
    elif shuffle_scopes:
        record["shuffle"] = {
            "uni100": shuffle_diagnostic(trainer, test_data, shuffle_scopes, batches=batches,
                                         original=per_user["uni100"], show_progress=show_progress),
        }
        if "full" in per_user:
            record["shuffle"]["full"] = shuffle_diagnostic(trainer, full_data, shuffle_scopes, original=per_user["full"],
                                                           similarity=False, show_progress=show_progress)
    return record


def _child(model_name, config_dict, shuffle_scopes, path):
    sys.argv = sys.argv[:1]  # RecBole's Config reads --key=value flags from sys.argv
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it ends this process
    with user_errors():  # a user error: its message (and exit code 1), not a traceback
        record = train_and_evaluate(model_name, config_dict, shuffle_scopes)
    record["settings_file"] = os.path.basename(path)
    tmp = f"{path}.partial"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1, default=str)
    os.replace(tmp, path)


def exit_description(exitcode):
    """How a model's process ended, from its exit code (minus the signal number when a signal ended it)."""
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = "unknown signal"
        text = f"terminated by signal {-exitcode} ({name})"
        return f"{text}; killed: out of memory?" if -exitcode == signal.SIGKILL else text
    if exitcode == 0:
        return "it ended without writing its record"
    return f"exit code {exitcode}; its error is above"


def run_in_process(model_name, config_dict, shuffle_scopes, path):
    """:func:`train_and_evaluate` in a fresh process; the record is written to ``path``."""
    process = multiprocessing.get_context("spawn").Process(
        target=_child, args=(model_name, config_dict, tuple(shuffle_scopes), path))
    process.start()
    try:
        process.join()
    except BaseException:  # Ctrl-C: the model's process ignores it, so end it here
        process.terminate()
        process.join()
        raise
    if process.exitcode != 0 or not os.path.isfile(path):
        raise RuntimeError(f"{model_name} failed ({exit_description(process.exitcode)})")
    with open(path) as f:
        return json.load(f)


# ---- many models ------------------------------------------------------------------------------


def run_models(models, common, model_config=None, shuffle_scopes=(), results_dir="results", rerun=(), log=print,
               step=None):
    """Train and test each of ``models`` (resuming finished ones); returns ``(records, failures)``.
    ``log`` takes progress messages (first the estimated time of the models to run); ``step`` is called
    after each model."""
    from recbole_llmsrec.trainer import duration

    records, failures = [], {}
    folder = os.path.join(results_dir, common["dataset"], "runs")
    os.makedirs(folder, exist_ok=True)
    runs = []  # (model, its config dict, its settings, the path of its record, whether to run it)
    estimates = {}  # model -> seconds at most, for the models to run with an earlier record to measure them
    for position, model_name in enumerate(models, start=1):
        config_dict = {**common, **(model_config or {}).get(model_name, {})}
        config, settings, key = run_settings(model_name, config_dict, shuffle_scopes)
        path = os.path.join(folder, f"{model_name}-{key}.json")
        run_it = model_name in rerun or not os.path.isfile(path)
        runs.append((model_name, config_dict, settings, path, run_it))
        if not run_it:
            continue
        earlier = earlier_record(folder, model_name, common["dataset"])
        head = f"[{position}/{len(models)}] {model_name}"
        if earlier is None:
            log(f"{head}: no earlier run to estimate from")
            continue
        try:
            estimates[model_name], how = estimate_seconds(config, earlier)
        except (KeyError, TypeError, ValueError) as err:  # an estimate is no reason to stop the leaderboard
            log(f"{head}: no estimate: its earlier record lacks what one needs ({err!r})")
            continue
        log(f"{head}: at most about {duration(estimates[model_name])} ({how})")
    to_run = [run for run in runs if run[-1]]
    if to_run:
        unknown = len(to_run) - len(estimates)
        log(f"estimated: at most about {duration(sum(estimates.values()))} for {len(to_run)} "
            f"model{'s' if len(to_run) != 1 else ''} to run"
            + (f" ({unknown} of them with no estimate)" if unknown else "")
            + (f"; {len(runs) - len(to_run)} finished before" if len(runs) > len(to_run) else "")
            + "; early stopping usually ends training sooner")

    def left_after(position):
        left = [model for model, *_, run_it in runs[position:] if run_it]
        if not left:
            return "no models left"
        known = [model for model in left if model in estimates]
        text = f"{len(left)} model{'s' if len(left) != 1 else ''} left"
        if not known:
            return f"{text}, with no estimate"
        return (f"{text}, at most about {duration(sum(estimates[model] for model in known))}"
                + (f" (and {len(left) - len(known)} with no estimate)" if len(known) < len(left) else ""))

    for position, (model_name, config_dict, settings, path, run_it) in enumerate(runs, start=1):
        settings_path = path[: -len(".json")] + ".settings.json"
        head = f"[{position}/{len(models)}] {model_name}"
        if not run_it:
            with open(path) as f:
                record = json.load(f)
            log(f"{head}: finished before with the same settings, read from {path}")
            records.append(record)
            if step:
                step()
            continue
        with open(settings_path, "w") as f:
            json.dump({"model": model_name, "settings": settings}, f, indent=1)
        log(f"{head}: training and testing (settings {settings_path})")
        start = time.perf_counter()
        try:
            record = run_in_process(model_name, config_dict, shuffle_scopes, path)
        except KeyboardInterrupt:
            raise KeyboardInterrupt(
                f"{model_name} was stopped; the records of the models finished before are in {folder}/, "
                f"and the same command reads them and runs the others") from None
        except RuntimeError as err:
            failures[model_name] = str(err)
            log(f"{head}: FAILED: {err}")
            if position < len(runs):
                log(f"{head}: {left_after(position)}")
            if step:
                step()
            continue
        records.append(record)
        if step:
            step()
        result = record["results"]["uni100"]
        full = record["results"].get("full")
        log(f"{head}: done in {duration(time.perf_counter() - start)}, converged: "
            f"{converged_label(record.get('training'))}; uni100 NDCG@10 {result['ndcg@10']:.4f}, full NDCG@10 "
            + (f"{full['ndcg@10']:.4f}" if full else f"n/a ({record['full_error']})") + f"; {left_after(position)}")
    return records, failures


def leaderboard_table(records):
    import pandas as pd

    rows = []
    for record in records:
        training = record.get("training")  # none: written before the training rule was kept
        for mode in EVAL_MODES:
            result = record["results"].get(mode) or {}  # none: the model cannot rank in this mode (full_error)
            rows.append({
                "model": record["model"], "eval_mode": mode, **{m: result.get(m) for m in COLUMNS[2:6]},
                "train_seconds": round(record["train_seconds"], 1), "trainable_params": record["trainable_params"],
                "best_epoch": _epochs_text(training["best_epoch"]) if training else "",
                "converged": converged_label(training),
            })
    return pd.DataFrame(rows, columns=COLUMNS)


def warm_cold_table(records):
    import pandas as pd

    rows = []
    for record in records:
        for mode, groups in record["warm_cold"].items():
            for group, entry in groups.items():
                low, high = entry.get("item_interactions") or (None, None)
                rows.append({"model": record["model"], "eval_mode": mode, "group": group, "users": entry["users"],
                             "item interactions": f"{low}-{high}",
                             **{m: entry[m] for m in COLUMNS[2:6]}})
    return pd.DataFrame(rows)


def write_leaderboard(records, folder, title):
    """``leaderboard.csv``/``.md``/``.png`` and ``warm_cold.csv``/``.md`` in ``folder``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    os.makedirs(folder, exist_ok=True)
    table = leaderboard_table(records)
    table.to_csv(os.path.join(folder, "leaderboard.csv"), index=False)
    extra = {r["model"]: (round(r["setup_seconds"], 1), r["epochs_run"]) for r in records}
    shown = table.assign(setup_seconds=table["model"].map(lambda m: extra[m][0]),
                         epochs=table["model"].map(lambda m: extra[m][1]))
    with open(os.path.join(folder, "leaderboard.md"), "w") as f:
        f.write(f"{title}\n\n{protocol_note(records)}\n\n")
        for mode in EVAL_MODES:
            part = shown[shown["eval_mode"] == mode].sort_values("ndcg@10", ascending=False)
            formats = [".4f" if column.startswith(("ndcg", "hit")) else ".1f" if column.endswith("seconds") else "g"
                       for column in part.columns]
            f.write(f"### {mode}\n\n{part.to_markdown(index=False, floatfmt=formats)}\n\n")
        f.write(convergence_notes(records) + "\n")
    warm = warm_cold_table(records)
    warm.to_csv(os.path.join(folder, "warm_cold.csv"), index=False)
    with open(os.path.join(folder, "warm_cold.md"), "w") as f:
        f.write(f"{title}\n\n{protocol_note(records)}\n\nTarget items split by their training interactions (warm: the "
                f"most interacted share of the catalogue, cold: the least; see warm_item_ratio / cold_item_ratio).\n\n")
        f.write(warm.to_markdown(index=False, floatfmt=".4f") + "\n")

    fig, axes = plt.subplots(1, len(EVAL_MODES), figsize=(6 + 0.6 * len(records), 4.2), squeeze=False)
    for ax, mode in zip(axes[0], EVAL_MODES):
        part = table[table["eval_mode"] == mode]
        x = np.arange(len(part))
        for offset, metric in ((-0.2, "ndcg@10"), (0.2, "hit@10")):
            ax.bar(x + offset, part[metric], width=0.4, label=metric.upper().replace("HIT", "HR"))
        ax.set_xticks(x, part["model"], rotation=30, ha="right")
        ax.set_title(mode)
        values = part[["ndcg@10", "hit@10"]].to_numpy(dtype=float)
        ax.set_ylim(0, max(1e-3, float(np.nanmax(values)) if not np.isnan(values).all() else 1.0) * 1.15)
    axes[0][0].legend()
    fig.suptitle(textwrap.fill(title.lstrip("# "), width=int(16 * fig.get_figwidth())), fontsize=9)  # long settings wrap
    fig.tight_layout()
    fig.savefig(os.path.join(folder, "leaderboard.png"), dpi=120)
    plt.close(fig)
    return table


def shuffled_training_records(original, shuffled, scope):
    """Pairs of runs (trained on original vs shuffled sequences) as shuffle-report records."""
    from recbole_llmsrec.evaluation.shuffle import relative_change

    by_model = {record["model"]: record for record in original}
    pairs = []
    for record in shuffled:
        base = by_model.get(record["model"])
        if base is None:
            continue
        pairs.append({"model": record["model"], "shuffle": {
            mode: {f"train, {scope}": {"original": base["results"][mode], "shuffled": record["results"][mode],
                                      "change": relative_change(base["results"][mode], record["results"][mode])}}
            for mode in EVAL_MODES if base["results"].get(mode) and record["results"].get(mode)}})
    return pairs


def leaderboard_main(argv=None, compare_shuffled_training=False):
    from tqdm import tqdm

    from recbole_llmsrec.data.shuffle import SHUFFLE_SCOPES
    from recbole_llmsrec.evaluation.shuffle import write_shuffle_report

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)  # --shuffle_scope (a config key) is not --shuffle_scopes
    parser.add_argument("--dataset", "-d", default="ml-100k")
    parser.add_argument("--models", "-m", default=None, help="comma-separated model names (default: all)")
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--model_config", default="{}", help='JSON: {"Model": {"key": value}} for single models')
    parser.add_argument("--shuffle_scopes", default=",".join(SHUFFLE_SCOPES),
                        help="shuffled-history diagnostic scopes, comma-separated; none to skip it")
    parser.add_argument("--rerun", default="", help="comma-separated models to run again even if finished")
    parser.add_argument("--results_dir", default="results")
    args, unknown = parser.parse_known_args(argv)
    flags = config_flags(unknown)
    if "model" in flags:
        parser.error("name the models with --models=A,B (comma-separated), not --model")
    sys.argv = sys.argv[:1]
    models = args.models.split(",") if args.models else default_models()
    if compare_shuffled_training:  # a model without a sequence cannot be trained on shuffled ones
        skipped = [m for m in models if not is_sequential(m)]
        if skipped:
            tqdm.write(f"shuffled training: skipping {', '.join(skipped)} (not sequential models: no sequence to shuffle)")
        models = [m for m in models if m not in skipped]
    scopes = tuple(s for s in args.shuffle_scopes.split(",") if s and s != "none")
    common = {"dataset": args.dataset, "seed": args.seed, **flags}
    if compare_shuffled_training:
        common["shuffle_mode"] = "none"
    try:
        model_config = json.loads(args.model_config)
    except json.JSONDecodeError as err:
        raise UserError(f"--model_config is not JSON ({err}): give it as '{{\"Model\": {{\"key\": value}}}}'") from None
    show_progress = flags.get("show_progress", True)
    bar = tqdm(total=len(models) * (2 if compare_shuffled_training else 1), desc="Leaderboard", ncols=100,
               disable=not show_progress)

    def step():
        bar.update(1)

    rerun = args.rerun.split(",")

    def run(settings):
        try:
            return run_models(models, settings, model_config, scopes, args.results_dir, rerun, tqdm.write, step)
        except BaseException:
            bar.close()  # before the error (or interruption) is printed
            raise

    records, failures = run(common)
    folder = os.path.join(args.results_dir, args.dataset)
    title = f"# {args.dataset}: seed {args.seed}, settings {json.dumps(flags) if flags else 'as in properties/'}"
    if compare_shuffled_training:
        shuffled, more_failures = run({**common, "shuffle_mode": "train"})
        failures.update({f"{m} (shuffled training)": e for m, e in more_failures.items()})
        from recbole_llmsrec.config import Config

        scope = Config(model=models[0], config_dict={**common, **model_config.get(models[0], {})})["shuffle_scope"]
        pairs = shuffled_training_records(records, shuffled, scope)
        if pairs:
            table = write_shuffle_report(pairs, folder, name="shuffle_train",
                                         title=f"{title}\n\nTrained on shuffled vs original sequences (tested on original order)")
            tqdm.write(table.to_string(index=False))
    elif records:
        table = write_leaderboard(records, folder, title)
        tqdm.write(table.to_string(index=False))
        shuffled = [record for record in records if record.get("shuffle")]
        if scopes and shuffled:
            skipped = "".join(f"\n\n{r['model']}: skipped, {r['shuffle_skipped']}." for r in records if r.get("shuffle_skipped"))
            write_shuffle_report(shuffled, folder, title=f"{title}\n\nTest histories shuffled (models trained on "
                                                         f"original order)\n\n{protocol_note(shuffled)}{skipped}")
    bar.close()
    if records:
        tqdm.write(f"wrote {folder}/")
    if failures:
        tqdm.write("failed: " + "; ".join(f"{model}: {err}" for model, err in failures.items()))
        sys.exit(1)
    return records


def shuffle_main(argv=None):
    """The command line of :mod:`recbole_llmsrec.evaluation.shuffle`: the diagnostic of saved
    checkpoints, or (``--shuffle_mode=train``) the leaderboard on original and shuffled sequences."""
    from recbole_llmsrec.data.shuffle import SHUFFLE_SCOPES
    from recbole_llmsrec.evaluation import shuffle

    parser = argparse.ArgumentParser(description=shuffle.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)  # --shuffle_scope (a config key) is not --shuffle_scopes
    parser.add_argument("--shuffle_mode", default="test", choices=["test", "train"],
                        help="test: shuffle the test histories of trained checkpoints; train: train each model "
                             "on original and on shuffled sequences (through the leaderboard) and compare")
    parser.add_argument("--model_file", action="append", default=[], help="a checkpoint (repeat for several); test mode")
    parser.add_argument("--shuffle_scopes", default=",".join(SHUFFLE_SCOPES), help="comma-separated scopes")
    parser.add_argument("--eval_modes", default="uni100,full", help="comma-separated: uni100, full")
    parser.add_argument("--results_dir", default="results", help="tables and plots go to <results_dir>/<dataset>/")
    args, unknown = parser.parse_known_args(argv)
    if args.shuffle_mode == "train":
        forwarded = [f"--results_dir={args.results_dir}", f"--shuffle_scopes={args.shuffle_scopes}"]
        return leaderboard_main(unknown + forwarded, compare_shuffled_training=True)
    overrides = config_flags(unknown)
    sys.argv = sys.argv[:1]  # RecBole's Config would read the flags again
    scopes = [s for s in args.shuffle_scopes.split(",") if s and s != "none"]
    if not args.model_file:
        parser.error("give --model_file=<checkpoint> (or --shuffle_mode=train with --models)")
    records = [shuffle.diagnose_checkpoint(path, scopes, tuple(args.eval_modes.split(",")), overrides) for path in args.model_file]
    datasets = {record["dataset"] for record in records}
    if len(datasets) > 1:
        raise UserError(f"the checkpoints are of different datasets ({sorted(datasets)}); report one dataset at a time")
    folder = os.path.join(args.results_dir, datasets.pop())
    table = shuffle.write_shuffle_report(records, folder, title="Test histories shuffled (models trained on original order)")
    print(table.to_string(index=False))
    print(f"wrote {folder}/shuffle.csv, shuffle.md, shuffle.png")
    return table


if __name__ == "__main__":
    with user_errors():
        leaderboard_main()
