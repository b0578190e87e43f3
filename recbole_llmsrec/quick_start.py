"""``run_recbole_llmsrec`` and ``objective_function``: RecBole's quick start, for every model.

These repeat ``recbole.quick_start`` step by step without importing it (it imports ray, see
:mod:`recbole_llmsrec.compat`) and without its FLOPs count (which deep-copies the model: ruinous
for an LLM).
"""

from logging import getLogger

from recbole.data import data_preparation
from recbole.utils import init_logger, init_seed, set_color

from recbole_llmsrec.config import Config
from recbole_llmsrec.data import create_dataset
from recbole_llmsrec.utils import get_model, get_trainer


def _build(config):
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    return dataset, train_data, valid_data, test_data, model, trainer


def run_recbole_llmsrec(model=None, dataset=None, config_file_list=None, config_dict=None, saved=True):
    """Train and evaluate one model, as ``recbole.quick_start.run_recbole`` does.

    Returns a dict with ``best_valid_score``, ``valid_score_bigger``, ``best_valid_result``,
    ``test_result`` and ``saved_model_file``.
    """
    config = Config(model=model, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
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
    return {
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
        "saved_model_file": trainer.saved_model_file if saved else None,
    }


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
