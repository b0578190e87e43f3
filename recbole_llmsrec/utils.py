"""Model and trainer lookup: this plugin's classes first, then RecBole's."""

import importlib
import importlib.util
import pkgutil

from recbole.utils import get_trainer as recbole_get_trainer

from recbole_llmsrec.compat import trusted_trainer

_MODEL_PACKAGES = ("sequential_recommender",)
# RecBole's model packages; exlib_recommender is left out (it needs xgboost and lightgbm).
_RECBOLE_MODEL_PACKAGES = (
    "general_recommender",
    "context_aware_recommender",
    "sequential_recommender",
    "knowledge_aware_recommender",
)


def _plugin_model_modules():
    import recbole_llmsrec.model as model_pkg

    for kind in _MODEL_PACKAGES:
        package = importlib.import_module(f"{model_pkg.__name__}.{kind}")
        for info in pkgutil.iter_modules(package.__path__):
            yield f"{package.__name__}.{info.name}"


def plugin_model_names():
    """The model classes this plugin adds, by class name."""
    names = []
    for module_name in _plugin_model_modules():
        module = importlib.import_module(module_name)
        names += [
            name for name, obj in vars(module).items()
            if isinstance(obj, type) and name.lower() == module_name.rsplit(".", 1)[1]
        ]
    return sorted(names)


def recbole_model_names():
    """RecBole's own model names, from its module files."""
    names = []
    for kind in _RECBOLE_MODEL_PACKAGES:
        package = importlib.import_module(f"recbole.model.{kind}")
        names += [info.name for info in pkgutil.iter_modules(package.__path__)]
    return sorted(names)


def get_model(model_name):
    """The model class called ``model_name``: ours first, then RecBole's."""
    for module_name in _plugin_model_modules():
        if module_name.rsplit(".", 1)[1] == model_name.lower():
            module = importlib.import_module(module_name)
            if hasattr(module, model_name):
                return getattr(module, model_name)
    for kind in _RECBOLE_MODEL_PACKAGES:
        module_name = f"recbole.model.{kind}.{model_name.lower()}"
        if importlib.util.find_spec(module_name) is not None:
            module = importlib.import_module(module_name)
            if hasattr(module, model_name):
                return getattr(module, model_name)
    raise ValueError(
        f"unknown model {model_name!r} (names are case-sensitive). This plugin's models: "
        f"{', '.join(plugin_model_names())}. RecBole's models (module names; pass the "
        f"class name, e.g. SASRec for sasrec): {', '.join(recbole_model_names())}"
    )


def get_trainer(model_type, model_name):
    """The trainer for ``model_name``: ``recbole_llmsrec.trainer.<Model>Trainer`` if we define one,
    else RecBole's choice; either way with the torch>=2.6 checkpoint fix of :mod:`compat`."""
    trainer_module = importlib.import_module("recbole_llmsrec.trainer")
    trainer_class = getattr(trainer_module, f"{model_name}Trainer", None)
    if trainer_class is None:
        trainer_class = recbole_get_trainer(model_type, model_name)
    return trusted_trainer(trainer_class)
