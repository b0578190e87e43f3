"""LLMSRec trained to its plateau on one dataset: the learning curve against its SASRec teacher.

One run trains LLMSRec with the given settings (validation on a stated cadence, early stopping),
then tests the best checkpoint on the leaderboard's candidates (``uni100`` after the seed reset,
every negative outside the user's history) and with full ranking, and tests the frozen teacher
the same way. Each run is one record under ``runs`` of the report, keyed by ``--name``; a later
call with another name adds its record (ablations), the same name replaces it.

    python benchmarks/llmsrec_plateau.py --dataset=ml-100k --name=lr1e-3 \\
        --llmsrec_config='{"learning_rate": 0.001, "adam_betas": [0.9, 0.98], "prompt_show_dates": false}'

Per validation the record holds the validation NDCG@10 and HR@10, the learning rate, the mean of
each loss term since the previous validation and the seconds of training and validation
(``trainer.valid_history``). ``--resume=saved/LLMSRec-....-latest.pth`` continues an interrupted run
exactly from its last validation (``resume_checkpoint``; a best checkpoint ``saved/LLMSRec-....pth``
works too, repeating the epochs after it; the curve so far is kept in ``--workdir``).

``--pop_only`` tests RecBole's ``Pop`` on the same candidates into the report's ``pop`` entry (the
floor every model must clear).

Writes ``benchmarks/results/llmsrec_plateau_<dataset>.json``.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import REPO, machine, parser, report_path, start, write_report  # noqa: E402


def per_user_metrics(trainer, test_data, config):
    """uni100 (the leaderboard's seed-reset candidates) and full-ranking test means of ``trainer``'s model."""
    from recbole_llmsrec.evaluation.ranking import evaluate_per_user, fixed_batches, full_sort_loader

    batches = fixed_batches(test_data, config["seed"], config["reproducibility"])
    per_user = {"uni100": evaluate_per_user(trainer, test_data, batches)}
    per_user["full"] = evaluate_per_user(trainer, full_sort_loader(config, test_data))
    return per_user


def teacher_metrics(config, teacher_path, common):
    """The frozen teacher (a RecBole SASRec checkpoint) tested on the same split and candidates."""
    from recbole.utils import init_seed

    from recbole_llmsrec.compat import load_recbole_checkpoint
    from recbole_llmsrec.config import Config
    from recbole_llmsrec.evaluation.popularity import warm_cold
    from recbole_llmsrec.quick_start import _build

    saved = load_recbole_checkpoint(teacher_path, map_location="cpu")["config"]
    keys = ("hidden_size", "inner_size", "n_layers", "n_heads", "hidden_dropout_prob", "attn_dropout_prob",
            "loss_type", "MAX_ITEM_LIST_LENGTH")
    sasrec = Config(model="SASRec", config_dict={
        **{key: saved[key] for key in keys}, "train_neg_sample_args": None if saved["loss_type"] == "CE" else
        {"distribution": "uniform", "sample_num": 1}, **common, "state": "WARNING", "show_progress": False})
    init_seed(sasrec["seed"], sasrec["reproducibility"])
    dataset, _, valid_data, test_data, _, trainer = _build(sasrec)
    checkpoint = load_recbole_checkpoint(teacher_path, map_location=sasrec["device"])
    trainer.model.load_state_dict(checkpoint["state_dict"])
    trainer.model.eval()
    per_user = per_user_metrics(trainer, test_data, sasrec)
    return {
        "checkpoint": os.path.relpath(teacher_path, REPO),
        "test": {mode: result.mean() for mode, result in per_user.items()},
        "warm_cold": {mode: warm_cold(sasrec, dataset, valid_data._dataset, test_data._dataset, result)
                      for mode, result in per_user.items()},
    }


def pop_metrics(common):
    """RecBole's Pop (item counts of the training split), the floor every model must clear, tested
    on the same split and candidates."""
    from recbole.utils import init_seed

    from recbole_llmsrec.config import Config
    from recbole_llmsrec.evaluation.popularity import warm_cold
    from recbole_llmsrec.quick_start import _build

    config = Config(model="Pop", config_dict={**common, "epochs": 1, "state": "WARNING", "show_progress": False})
    init_seed(config["seed"], config["reproducibility"])
    dataset, train_data, valid_data, test_data, _, trainer = _build(config)
    trainer.fit(train_data, valid_data, saved=False, show_progress=False)
    per_user = per_user_metrics(trainer, test_data, config)
    return {
        "test": {mode: result.mean() for mode, result in per_user.items()},
        "warm_cold": {mode: warm_cold(config, dataset, valid_data._dataset, test_data._dataset, result)
                      for mode, result in per_user.items()},
    }


def main():
    flags = parser(__doc__)
    flags.add_argument("--name", default="", help="this run's record name in the report (required unless --pop_only)")
    flags.add_argument("--llm_path", default="smollm2-135m")
    flags.add_argument("--llmsrec_config", default="{}", help="JSON dict of LLMSRec config overrides")
    flags.add_argument("--resume", default="", help="an interrupted run's checkpoint to continue from")
    flags.add_argument("--pop_only", action="store_true",
                       help="test RecBole's Pop on the same candidates into the report's 'pop' entry, and stop")
    flags.add_argument("--evaluate_only", default="", help="a finished run's checkpoint: test it (and the teacher) "
                       "without training; the curve comes from the run's curve file in --workdir")
    args = flags.parse_args()
    if not args.name and not args.pop_only:
        flags.error("--name is required")
    common = start(args)

    import torch
    from recbole.utils import init_logger, init_seed

    out = report_path(args, "llmsrec_plateau")
    if args.pop_only:
        report = {"runs": {}}
        if os.path.isfile(out):
            with open(out) as f:
                report = json.load(f)
        report["pop"] = {**pop_metrics(common), "command": f"python benchmarks/llmsrec_plateau.py "
                         f"--dataset={args.dataset} --pop_only",
                         "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        write_report(json.loads(json.dumps(report, default=float)), out)
        print(json.dumps(report["pop"]["test"], default=float), f"\nwrote {out}")
        return

    from recbole_llmsrec.config import Config
    from recbole_llmsrec.evaluation.popularity import warm_cold
    from recbole_llmsrec.quick_start import _build

    overrides = json.loads(args.llmsrec_config)
    settings = {**common, "llm_path": args.llm_path, **overrides}
    if args.resume:
        settings["resume_checkpoint"] = os.path.join(REPO, args.resume) if not os.path.isabs(args.resume) else args.resume
    config = Config(model="LLMSRec", config_dict=settings)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    began = time.perf_counter()
    dataset, train_data, valid_data, test_data, model, trainer = _build(config)
    setup_seconds = time.perf_counter() - began

    # the curve so far survives an interrupted sitting: it is rewritten after every validation
    curve_file = os.path.join(args.workdir, f"plateau_{args.dataset}_{args.name}.curve.json")
    earlier = []
    # a latest checkpoint (written after every validation) brings its run's validations with it;
    # a best checkpoint does not, and the curve file holds them
    if args.resume and os.path.isfile(curve_file) and not trainer.valid_history:
        with open(curve_file) as f:
            earlier = json.load(f)["valid_history"]
    validate = trainer._validate

    def recorded_validate(*a, **kw):  # after each validation, its entry included
        result = validate(*a, **kw)
        with open(curve_file, "w") as f:
            json.dump({"valid_history": earlier + list(trainer.valid_history),
                       "checkpoint": os.path.relpath(trainer.saved_model_file, REPO)}, f, indent=1, default=float)
        return result

    trainer._validate = recorded_validate
    began = time.perf_counter()
    if args.evaluate_only:
        with open(curve_file) as f:
            history = json.load(f)["valid_history"]
        trainer.saved_model_file = args.evaluate_only if os.path.isabs(args.evaluate_only) else os.path.join(REPO, args.evaluate_only)
    else:
        trainer.fit(train_data, valid_data, saved=True, show_progress=config["show_progress"])
        history = earlier + list(trainer.valid_history)
        with open(curve_file, "w") as f:
            json.dump({"valid_history": history, "checkpoint": os.path.relpath(trainer.saved_model_file, REPO)},
                      f, indent=1, default=float)
    fit_seconds = time.perf_counter() - began

    trainer.load_model_checkpoint(trainer.saved_model_file)
    began = time.perf_counter()
    per_user = per_user_metrics(trainer, test_data, config)
    test_seconds = time.perf_counter() - began
    best = max(history, key=lambda entry: entry["valid_score"]) if history else None
    last_best = max(i for i, entry in enumerate(history) if entry["best"]) if history else -1
    stopped = ("early stopping" if len(history) - 1 - last_best > config["stopping_step"]
               else "maximum epochs" if history and history[-1]["epoch"] >= config["epochs"] else "interrupted")
    record = {
        "settings": {key: config[key] for key in (
            "learning_rate", "adam_betas", "lr_decay_per_valid", "valid_per_epoch", "epochs", "stopping_step",
            "valid_metric", "train_batch_size", "train_neg_num", "prompt_show_dates", "prompt_history_len",
            "lambda_distill", "lambda_uniform", "teacher_train_mode", "train_last_item_only", "llm_path",
            "llm_dtype", "llm_compute_dtype", "llm_head_cache", "eval_neg_exclude", "seed")},
        "overrides": overrides,
        "command": "python benchmarks/llmsrec_plateau.py " + " ".join(
            [f"--dataset={args.dataset}", f"--name={args.name}", f"--llm_path={args.llm_path}",
             f"--llmsrec_config='{args.llmsrec_config}'"] + ([f"--resume={args.resume}"] if args.resume else [])
            + ([f"--evaluate_only={args.evaluate_only}"] if args.evaluate_only else [])),
        "valid_history": history,
        "validations": len(history),
        "best_validation": best,
        "stopped_by": stopped,
        "test": {mode: result.mean() for mode, result in per_user.items()},
        "warm_cold": {mode: warm_cold(config, dataset, valid_data._dataset, test_data._dataset, result)
                      for mode, result in per_user.items()},
        "setup_seconds": setup_seconds,
        "fit_seconds_this_sitting": fit_seconds,
        "test_seconds": test_seconds,
        "checkpoint": os.path.relpath(trainer.saved_model_file, REPO),
        "machine": machine(),
        "torch_threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    record["teacher"] = teacher_metrics(config, model.teacher.checkpoint_path, common)
    teacher_ndcg = record["teacher"]["test"]["uni100"]["ndcg@10"]
    record["ratio_to_teacher_uni100_ndcg@10"] = record["test"]["uni100"]["ndcg@10"] / teacher_ndcg
    print(json.dumps({k: record[k] for k in ("test", "best_validation", "ratio_to_teacher_uni100_ndcg@10")},
                     indent=1, default=float), flush=True)

    report = {"runs": {}}
    if os.path.isfile(out):
        with open(out) as f:
            report = json.load(f)
    report["dataset"] = args.dataset
    report["runs"][args.name] = record
    write_report(json.loads(json.dumps(report, default=float)), out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
