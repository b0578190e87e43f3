"""``Config``: RecBole's configurator, plus this plugin's models and ``properties/`` YAML.

Loading order (later wins), the same as RecBole's with our layer added after its own:
RecBole's defaults -> ``properties/overall.yaml`` -> ``properties/model/<Model>.yaml`` ->
``properties/dataset/<dataset>.yaml`` -> config files -> config dict -> command line.
"""

import os
import warnings

from recbole.config import Config as RecBoleConfig

from recbole_llmsrec.utils import get_model


def properties_dir():
    """The folder holding our YAML: ``recbole_llmsrec/properties`` in an installed wheel, or the
    top-level ``properties/`` of a checkout (editable install, or running from the repository)."""
    package = os.path.dirname(os.path.abspath(__file__))
    for folder in (os.path.join(package, "properties"), os.path.join(os.path.dirname(package), "properties")):
        if os.path.isfile(os.path.join(folder, "overall.yaml")):
            return folder
    raise FileNotFoundError(
        "recbole_llmsrec cannot find its properties/ folder (overall.yaml); reinstall the package "
        "(pip install -e . from the repository root, or pip install the wheel)"
    )


class Config(RecBoleConfig):
    def _get_model_and_dataset(self, model, dataset):
        if model is None:
            model = self.external_config_dict.get("model")
            if model is None:
                raise KeyError("set the model: --model=LLMSRec, a config file, or the model argument")
        if isinstance(model, str):
            model_class = get_model(model)
        else:
            model_class, model = model, model.__name__
        if dataset is None:
            dataset = self.external_config_dict.get("dataset")
            if dataset is None:
                raise KeyError("set the dataset: --dataset=ml-100k, a config file, or the dataset argument")
        return model, model_class, dataset

    def _set_default_parameters(self):
        # RecBole's sequential models default to loss_type CE but RecBole's overall.yaml also
        # defaults to one sampled negative, a combination RecBole itself rejects; a CE model
        # needs no sampled negatives, so drop them unless the user asked for some.
        if (
            self.final_config_dict.get("loss_type") == "CE"
            and "train_neg_sample_args" not in self.external_config_dict
        ):
            self.final_config_dict["train_neg_sample_args"] = None
        # RecBole fills the sub-keys a user leaves out of eval_args with *its* defaults (random
        # split, full ranking); take them from our properties instead, so that
        # --eval_args="{'mode': {'valid': 'full', 'test': 'full'}}" keeps the leave-one-out split.
        external = self.external_config_dict.get("eval_args")
        internal = self.internal_config_dict.get("eval_args")
        if isinstance(external, dict) and isinstance(internal, dict):
            self.final_config_dict["eval_args"] = {**internal, **external}
        # likewise teacher_config: --teacher_config="{'epochs': 5}" changes the epochs, not the teacher
        external = self.external_config_dict.get("teacher_config")
        internal = self.internal_config_dict.get("teacher_config")
        if isinstance(external, dict) and isinstance(internal, dict):
            self.final_config_dict["teacher_config"] = {**internal, **external}
        super()._set_default_parameters()
        # RecBole reads ml-100k from the copy inside its wheel whatever data_path says; a data_path
        # the user sets wins, so a filtered or edited copy of ml-100k is not replaced silently
        if self.dataset == "ml-100k" and "data_path" in self.external_config_dict:
            self.final_config_dict["data_path"] = os.path.join(self.external_config_dict["data_path"], self.dataset)

    def _convert_config_dict(self, config_dict):
        # RecBole turns each string of a config dict or command line into a value by evaluating it as
        # Python, and keeps the string when that fails. Text such as item_text_template "{title}
        # ({year})" is not Python: compiling it warns (SyntaxWarning: 'set' object is not callable)
        # before it fails, and the string is kept all the same. The warning says nothing to a user.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)
            warnings.filterwarnings("ignore", message="invalid escape sequence", category=DeprecationWarning)
            return super()._convert_config_dict(config_dict)

    def _init_device(self):
        final = self.final_config_dict
        if "local_rank" not in final:
            return super()._init_device()
        # one process of a distributed run (quick_start.run with nproc > 1). RecBole's own path
        # is NCCL with one GPU per process; without GPUs, the processes share the CPU over gloo.
        gpu_id = final["gpu_id"]
        gpu_id = ",".join(map(str, gpu_id)) if isinstance(gpu_id, (tuple, list)) else str(gpu_id)
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu_id
        import torch

        if final["use_gpu"] and gpu_id and torch.cuda.is_available():
            if torch.cuda.device_count() < final["nproc"]:
                raise ValueError(
                    f"nproc={final['nproc']} needs one GPU per process but gpu_id={gpu_id!r} gives "
                    f"{torch.cuda.device_count()}; list more GPUs in gpu_id (e.g. --gpu_id=0,1) or lower nproc"
                )
            return super()._init_device()
        final["gpu_id"] = gpu_id
        rank = final["local_rank"] + final["offset"]
        torch.distributed.init_process_group(
            backend="gloo", rank=rank, world_size=final["world_size"],
            init_method=f"tcp://{final['ip']}:{final['port']}",
        )
        final["device"] = torch.device("cpu")
        final["single_spec"] = False
        if final["local_rank"] != 0:
            final["state"] = "error"
            final["show_progress"] = False
            final["verbose"] = False

    def _load_internal_config_dict(self, model, model_class, dataset):
        super()._load_internal_config_dict(model, model_class, dataset)
        # a plugin model that extends a RecBole model (LLM2SASRec is a SASRec) starts from that
        # model's RecBole defaults, so every key the parent reads has a value
        import recbole

        recbole_models = os.path.join(os.path.dirname(recbole.__file__), "properties", "model")
        for base in reversed(model_class.__mro__[1:]):
            parent_yaml = os.path.join(recbole_models, f"{base.__name__}.yaml")
            if base.__module__.startswith("recbole.model.") and os.path.isfile(parent_yaml):
                self._update_internal_config_dict(parent_yaml)
        folder = properties_dir()
        for file in (
            os.path.join(folder, "overall.yaml"),
            os.path.join(folder, "model", f"{model}.yaml"),
            os.path.join(folder, "dataset", f"{dataset}.yaml"),
        ):
            if os.path.isfile(file):
                loaded = self._update_internal_config_dict(file)
                if file.endswith(f"{dataset}.yaml") and loaded:
                    self.parameters["Dataset"] += [
                        key for key in loaded if key not in self.parameters["Dataset"]
                    ]


# ---- settings checked before anything expensive --------------------------------------------------


def is_number(value):
    """An int or a float; not a bool (YAML and RecBole's command line turn true/false into bools)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_count(value):
    """A whole number >= 1 (an int, not a bool): of rows, epochs, steps, ..."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_settings(config):
    """Check every setting that needs neither the data nor any training, before the dataset is
    read: batch sizes, ``learning_rate``, ``epochs``, the training schedule
    (:func:`recbole_llmsrec.trainer.schedule_settings`) and ``save_latest_checkpoint``, and for the
    models that use them the LLM (``llm_path``) and the item text file (``item_text_fields``).
    Raises an error naming the setting and the fix."""
    model_class = get_model(config["model"])
    name = config["model"]
    for key in ("train_batch_size", "eval_batch_size"):
        value = config[key]
        if not is_count(value):
            raise ValueError(f"{key} must be a whole number >= 1 (rows per batch), got {value!r}; set e.g. --{key}=256")
    if "llm_batch_size" in config and config["llm_batch_size"] is not None and not is_count(config["llm_batch_size"]):
        raise ValueError(f"llm_batch_size must be a whole number >= 1 (prompts per LLM forward), got "
                         f"{config['llm_batch_size']!r}; set e.g. --llm_batch_size=16")
    training_free = getattr(model_class, "training_free", False)
    if not training_free:
        lr = config["learning_rate"]
        if not (is_number(lr) and lr > 0):
            raise ValueError(f"learning_rate must be a number > 0, got {lr!r}; set e.g. --learning_rate=0.001")
        epochs = config["epochs"]
        if not is_count(epochs):
            raise ValueError(
                f"epochs must be a whole number >= 1 for {name} (the most epochs to train; with none the test "
                f"would score an untrained model), got {epochs!r}; set e.g. --epochs=1"
            )
        from recbole_llmsrec.trainer import save_latest_setting, schedule_settings

        schedule_settings(config)
        save_latest_setting(config)
    if getattr(model_class, "uses_llm", False):
        from recbole_llmsrec.llm.backbone import check_llm_path

        check_llm_path(config["llm_path"], config["llm_cache_dir"])
    if getattr(model_class, "uses_item_text", False):
        from recbole_llmsrec.llm.text import item_text_file

        item_text_file(config)


def check_dataset_settings(config, dataset):
    """The checks that need the dataset but no training, once it is read and before the model is
    built: the item texts (empty or missing ones counted in a warning, or an error when
    ``item_text_placeholder`` is null) and the teacher (``teacher_checkpoint`` or the cached
    teacher readable and of this dataset; for a teacher still to train, ``teacher_config``)."""
    model_class = get_model(config["model"])
    if getattr(model_class, "uses_item_text", False):
        from recbole_llmsrec.llm.text import read_item_text

        read_item_text(config, dataset)
    if getattr(model_class, "uses_teacher", False):
        from recbole_llmsrec.teacher import check_teacher_settings

        check_teacher_settings(config, dataset)
