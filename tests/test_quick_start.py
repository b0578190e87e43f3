"""The entry points: model lookup, native RecBole models, objective_function, properties."""

import os
import subprocess
import sys

import pytest

from recbole_llmsrec.config import Config, properties_dir
from recbole_llmsrec.quick_start import objective_function, run_recbole_llmsrec
from recbole_llmsrec.utils import get_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_unknown_model_lists_the_available_ones():
    with pytest.raises(ValueError) as err:
        get_model("NoSuchModel")
    assert "LLMSRec" in str(err.value) and "sasrec" in str(err.value) and "bert4rec" in str(err.value)


def test_plugin_properties_load_after_recbole_defaults():
    config = Config(model="LLMSRec", dataset="ml-100k")
    assert config["llm_path"] == "smollm2-135m" and config["train_batch_size"] == 20
    assert config["item_text_fields"] == ["movie_title", "release_year"]
    assert config["eval_args"]["mode"] == {"valid": "uni100", "test": "uni100"}
    assert os.path.isfile(os.path.join(properties_dir(), "model", "LLMSRec.yaml"))
    # a partial eval_args keeps the plugin's split (RecBole alone would fall back to a random split)
    full = Config(model="LLMSRec", dataset="ml-100k", config_dict={"eval_args": {"mode": {"valid": "full", "test": "full"}}})
    assert full["eval_args"]["split"] == {"LS": "valid_and_test"} and full["eval_args"]["order"] == "TO"
    assert full["eval_args"]["mode"] == {"valid": "full", "test": "full"}
    native = Config(model="SASRec", dataset="ml-100k")
    assert native["loss_type"] == "CE" and native["train_neg_sample_args"]["distribution"] == "none"


def tiny_native(tiny_config_dict, **extra):
    keys = ("dataset", "data_path", "load_col", "checkpoint_dir", "MAX_ITEM_LIST_LENGTH", "show_progress", "state")
    return {**{k: tiny_config_dict[k] for k in keys}, "epochs": 2, "hidden_size": 16, "inner_size": 16,
            "n_layers": 1, "n_heads": 1, **extra}


@pytest.mark.parametrize("model", ["SASRec", "BERT4Rec"])
def test_native_recbole_models_run_unchanged(tiny_config_dict, model):
    result = run_recbole_llmsrec(model=model, config_dict=tiny_native(tiny_config_dict))
    assert 0.0 <= result["test_result"]["ndcg@10"] <= 1.0
    assert os.path.isfile(result["saved_model_file"])  # RecBole's checkpoint, reloaded for the test


def test_objective_function_has_recbole_contract(tiny_config_dict):
    result = objective_function(config_dict={**tiny_native(tiny_config_dict), "model": "SASRec"})
    assert set(result) == {"model", "best_valid_score", "valid_score_bigger", "best_valid_result", "test_result"}
    assert result["model"] == "SASRec" and result["valid_score_bigger"] is True


def test_cli_overrides_and_unknown_model(tiny_config_dict, tmp_path):
    script = os.path.join(REPO, "run_recbole_llmsrec.py")
    native = tiny_native(tiny_config_dict)
    args = [sys.executable, script, "--model=SASRec", "--dataset=tiny", f"--data_path={native['data_path']}",
            f"--config_files={os.path.join(native['data_path'], 'tiny.yaml')}",
            "--epochs=1", "--hidden_size=16", "--inner_size=16", "--n_heads=1", "--show_progress=False",
            f"--checkpoint_dir={tmp_path / 'saved'}"]
    done = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "test result" in done.stdout + done.stderr
    bad = subprocess.run([sys.executable, script, "--model=Nope"], cwd=tmp_path, capture_output=True, text=True)
    assert bad.returncode != 0 and "unknown model 'Nope'" in bad.stderr


def test_properties_ship_in_the_wheel(tmp_path):
    """A built wheel finds its YAML inside the installed package, wherever it is run from."""
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    def pip(*args):
        done = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]

    pip("wheel", REPO, "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels))
    pip("install", "-q", "--no-deps", "--target", str(target), *map(str, wheels.glob("*.whl")))
    probe = ("from recbole_llmsrec.config import Config, properties_dir; print(properties_dir()); "
             "print(Config(model='LLMSRec', dataset='ml-100k')['llm_path'])")
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(target)}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    folder, llm_path = done.stdout.split()[-2:]
    assert folder == str(target / "recbole_llmsrec" / "properties") and llm_path == "smollm2-135m"


def test_every_search_space_names_keys_its_model_reads():
    from recbole.trainer.hyper_tuning import HyperTuning

    folder = os.path.join(properties_dir(), "hyper")
    files = sorted(f for f in os.listdir(folder) if f.endswith(".hyper"))
    assert {"LLMSRec.hyper", "SASRec.hyper", "LLMSeqSim.hyper"} <= set(files)
    for name in files:
        model = name[: -len(".hyper")]
        space = HyperTuning._build_space_from_file(os.path.join(folder, name))
        config = Config(model=model, dataset="ml-100k")
        unknown = [key for key in space if config[key] is None]
        assert space and not unknown, f"{name}: {unknown} are not config keys of {model}"


def test_run_hyper_finds_the_best_of_a_small_search(tiny_config_dict, tmp_path):
    params = tmp_path / "space.hyper"
    params.write_text("learning_rate choice [0.0000001,0.01]\n")  # a learning rate this small cannot win
    output = tmp_path / "search.result"
    native = tiny_native(tiny_config_dict)
    args = [sys.executable, os.path.join(REPO, "run_hyper.py"), "--model=SASRec", "--dataset=tiny",
            f"--params_file={params}", f"--output_file={output}", f"--data_path={native['data_path']}",
            f"--config_files={os.path.join(native['data_path'], 'tiny.yaml')}", "--epochs=3",
            "--hidden_size=16", "--inner_size=16", "--n_heads=1", "--show_progress=False",
            f"--checkpoint_dir={tmp_path / 'saved'}"]
    done = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "best params: {'learning_rate': 0.01}" in done.stdout
    text = output.read_text()
    assert text.count("Valid result:") == 2 and "learning_rate:1e-07" in text and "learning_rate:0.01" in text


def test_a_data_path_given_for_ml_100k_is_read(tmp_path):
    """RecBole always reads ml-100k from its wheel; a data_path the user sets must win."""
    import pandas as pd

    from recbole_llmsrec.data import create_dataset

    packaged = Config(model="SASRec", dataset="ml-100k", config_dict={"state": "WARNING"})
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    inter = pd.read_csv(os.path.join(packaged["data_path"], "ml-100k.inter"), sep="\t", dtype=str)
    users = sorted(inter["user_id:token"].unique(), key=int)[:30]
    inter[inter["user_id:token"].isin(users)].to_csv(folder / "ml-100k.inter", sep="\t", index=False)
    config = Config(model="SASRec", dataset="ml-100k", config_dict={"data_path": str(tmp_path), "state": "WARNING"})
    assert config["data_path"] == str(folder)
    assert create_dataset(config).user_num == 30 + 1  # RecBole's padding id
    assert create_dataset(packaged).user_num == 943 + 1
