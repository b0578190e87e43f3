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
trainable_params), ``leaderboard.md``, ``leaderboard.png``, ``warm_cold.csv``/``.md`` and
``shuffle.csv``/``.md``/``.png`` in ``<results_dir>/<dataset>/``. ``train_seconds`` is the wall time of
``Trainer.fit`` (training epochs and their validation); building the model (loading an LLM,
training a teacher, embedding item texts) is ``setup_seconds`` in the run's JSON and the Markdown.

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

COLUMNS = ["model", "eval_mode", "ndcg@10", "hit@10", "ndcg@20", "hit@20", "train_seconds", "trainable_params"]
EVAL_MODES = ("uni100", "full")
# resolved settings that do not change a result: where things are written, how much is printed
_NOT_IN_KEY = {
    "checkpoint_dir", "show_progress", "state", "log_wandb", "wandb_project", "save_dataset", "save_dataloaders",
    "dataset_save_path", "dataloaders_save_path", "data_path", "llm_cache_dir", "text_emb_cache_dir",
    "resume_checkpoint", "gpu_id", "worker", "verbose", "local_rank", "nproc", "offset", "ip", "port", "world_size",
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

    trainer._train_epoch = timed(train_epoch, epoch_seconds)
    trainer._valid_epoch = timed(valid_epoch, valid_seconds)
    start = time.perf_counter()
    _, best_valid_result = trainer.fit(train_data, valid_data, saved=True, show_progress=show_progress)
    train_seconds = time.perf_counter() - start
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
        "valid_history": getattr(trainer, "valid_history", []),
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
    ``log`` takes progress messages; ``step`` is called after each model."""
    records, failures = [], {}
    folder = os.path.join(results_dir, common["dataset"], "runs")
    os.makedirs(folder, exist_ok=True)
    for position, model_name in enumerate(models, start=1):
        config_dict = {**common, **(model_config or {}).get(model_name, {})}
        _, settings, key = run_settings(model_name, config_dict, shuffle_scopes)
        path = os.path.join(folder, f"{model_name}-{key}.json")
        settings_path = os.path.join(folder, f"{model_name}-{key}.settings.json")
        head = f"[{position}/{len(models)}] {model_name}"
        if os.path.isfile(path) and model_name not in rerun:
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
            if step:
                step()
            continue
        records.append(record)
        if step:
            step()
        result = record["results"]["uni100"]
        full = record["results"].get("full")
        log(f"{head}: done in {time.perf_counter() - start:.0f} s; uni100 NDCG@10 {result['ndcg@10']:.4f}, "
            f"full NDCG@10 " + (f"{full['ndcg@10']:.4f}" if full else f"n/a ({record['full_error']})"))
    return records, failures


def leaderboard_table(records):
    import pandas as pd

    rows = []
    for record in records:
        for mode in EVAL_MODES:
            result = record["results"].get(mode) or {}  # none: the model cannot rank in this mode (full_error)
            rows.append({
                "model": record["model"], "eval_mode": mode, **{m: result.get(m) for m in COLUMNS[2:6]},
                "train_seconds": round(record["train_seconds"], 1), "trainable_params": record["trainable_params"],
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
