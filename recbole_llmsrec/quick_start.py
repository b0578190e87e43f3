"""``run_recbole_llmsrec`` and ``objective_function``: RecBole's quick start, for every model.

These repeat ``recbole.quick_start`` step by step without importing it (it imports ray, see
:mod:`recbole_llmsrec.compat`) and without its FLOPs count (which deep-copies the model: ruinous
for an LLM).
"""

import os
from collections.abc import MutableMapping
from logging import getLogger

import torch.distributed as dist
from recbole.utils import init_logger, init_seed, set_color

from recbole_llmsrec.config import Config, check_dataset_settings, check_settings
from recbole_llmsrec.data import create_dataset, data_preparation
from recbole_llmsrec.utils import get_model, get_trainer


def _build(config):
    check_settings(config)  # everything that can be checked is, before the data is read or anything trains
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    check_dataset_settings(config, dataset)  # item texts and the teacher's checkpoint, before the model is built
    # RecBole's, with sampled evaluation negatives outside each user's history (eval_neg_exclude)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    distributed = not config["single_spec"]
    if distributed and config["local_rank"] != 0:
        dist.barrier()  # process 0 first: it trains and caches what all need (teacher, converted LLM)
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    if distributed and config["local_rank"] == 0:
        dist.barrier()
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    if config["resume_checkpoint"]:
        trainer.resume_checkpoint(config["resume_checkpoint"])
    return dataset, train_data, valid_data, test_data, model, trainer


def run_recbole_llmsrec(model=None, dataset=None, config_file_list=None, config_dict=None, saved=True, queue=None):
    """Train and evaluate one model, as ``recbole.quick_start.run_recbole`` does.

    Returns a dict with ``best_valid_score``, ``valid_score_bigger``, ``best_valid_result``,
    ``test_result`` and ``saved_model_file``; process 0 of a distributed run also puts it on ``queue``.
    """
    config = Config(model=model, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    # RecBole creates these with check-then-make (ensure_dir): processes of one run would race
    for folder in (os.path.join("log", config["model"]), config["checkpoint_dir"]):
        os.makedirs(folder, exist_ok=True)
    init_logger(config)
    logger = getLogger()
    logger.info(config)

    dataset, train_data, valid_data, test_data, model, trainer = _build(config)
    logger.info(dataset)
    logger.info(model)

    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=saved, show_progress=config["show_progress"]
    )
    test_result = trainer.evaluate(test_data, load_best_model=saved, show_progress=config["show_progress"])

    logger.info(set_color("best valid ", "yellow") + f": {best_valid_result}")
    logger.info(set_color("test result", "yellow") + f": {test_result}")
    result = {
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
        "saved_model_file": trainer.saved_model_file if saved else None,
    }
    if not config["single_spec"]:
        dist.destroy_process_group()
    if config["local_rank"] == 0 and queue is not None:
        queue.put(result)
    return result


def run(model=None, dataset=None, config_file_list=None, config_dict=None, saved=True,
        nproc=1, world_size=-1, ip="localhost", port="5678", group_offset=0):
    """``recbole.quick_start.run``: one process, or ``nproc`` processes on this machine (of
    ``world_size`` in all, this machine's first rank being ``group_offset``) trained with
    DistributedDataParallel: NCCL with one GPU each, or gloo on the CPU without GPUs.
    Returns process 0's result."""
    if nproc == 1 and world_size <= 0:
        return run_recbole_llmsrec(model, dataset, config_file_list, config_dict, saved)
    import torch.multiprocessing as mp

    world_size = nproc if world_size == -1 else world_size
    config_dict = dict(config_dict or {})
    config_dict.update({"world_size": world_size, "ip": ip, "port": port, "nproc": nproc, "offset": group_offset})
    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(
        _run_process,
        args=(model, dataset, config_file_list, {"config_dict": config_dict, "saved": saved, "queue": queue}),
        nprocs=nproc,
        join=True,
    )
    return None if queue.empty() else queue.get()


def _run_process(rank, model, dataset, config_file_list, kwargs):
    if not isinstance(kwargs, MutableMapping):
        raise ValueError(f"the last argument must be a dict of keyword arguments, not {type(kwargs)}")
    kwargs["config_dict"] = {**kwargs.get("config_dict", {}), "local_rank": rank}
    run_recbole_llmsrec(model, dataset, config_file_list, **kwargs)


def objective_function(config_dict=None, config_file_list=None, saved=True):
    """The function RecBole's ``HyperTuning`` calls once per trial; same contract as RecBole's."""
    config = Config(config_dict=config_dict, config_file_list=config_file_list)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    _, train_data, valid_data, test_data, model, trainer = _build(config)
    best_valid_score, best_valid_result = trainer.fit(train_data, valid_data, verbose=False, saved=saved)
    test_result = trainer.evaluate(test_data, load_best_model=saved)
    return {
        "model": config["model"],
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
    }
