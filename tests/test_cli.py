"""The commands: a user error is one message on stderr, a bug keeps its traceback, Ctrl-C names
what was saved, and the leaderboard says why a model's process ended."""

import glob
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from recbole_llmsrec.cli import DEBUG_ENV, UserError, config_flags, is_user_error, user_errors

from conftest import DATA_DIR

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [f"--data_path={DATA_DIR}", f"--config_files={os.path.join(DATA_DIR, 'tiny.yaml')}", "--state=WARNING",
        "--show_progress=False", "--hidden_size=16", "--inner_size=16", "--n_layers=1", "--n_heads=1"]


def command(args, cwd, debug=False, **kwargs):
    env = {k: v for k, v in os.environ.items() if k != DEBUG_ENV}
    if debug:
        env[DEBUG_ENV] = "1"
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=300,
                          **kwargs)


# ---- what is a user error -------------------------------------------------------------------------


def in_module(module, source):
    """The function ``f`` of ``source``, defined as if in ``module``."""
    namespace = {"__name__": module}
    exec(compile(source, f"<{module}>", "exec"), namespace)
    return namespace["f"]


def raised(function):
    try:
        function()
    except Exception as err:  # noqa: BLE001 - the error is what is looked at
        return err
    raise AssertionError("no error")


def test_a_message_raised_in_the_package_is_a_user_error_and_a_failure_there_is_a_bug():
    assert is_user_error(raised(in_module("recbole_llmsrec.x", "def f():\n    raise ValueError('set k')")))
    assert is_user_error(raised(in_module("recbole_llmsrec.x", "def f():\n    raise KeyError('set k')")))
    assert is_user_error(raised(in_module("recbole.data.dataset.x", "def f():\n    raise ValueError('m')")))
    assert is_user_error(raised(lambda: config_flags(["epochs"])))  # a UserError
    # not raised by a raise statement: a missing key, a failed conversion
    assert not is_user_error(raised(in_module("recbole_llmsrec.x", "def f():\n    return {}['k']")))
    assert not is_user_error(raised(in_module("recbole_llmsrec.x", "def f():\n    return int('x')")))
    # raised outside this package and RecBole's config and data loading, or of another type
    assert not is_user_error(raised(in_module("torch.x", "def f():\n    raise ValueError('shape')")))
    assert not is_user_error(raised(in_module("recbole.model.x", "def f():\n    raise ValueError('m')")))
    assert not is_user_error(raised(in_module("recbole_llmsrec.x", "def f():\n    raise RuntimeError('m')")))


def test_user_errors_print_the_message_once_and_log_the_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    log_file = tmp_path / "run.log"
    handler = logging.FileHandler(log_file)
    logging.getLogger().addHandler(handler)
    try:
        with pytest.raises(SystemExit) as exit_info, user_errors():
            in_module("recbole_llmsrec.x", "def f():\n    raise KeyError('set lora_r')")()
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == "error: set lora_r\n"  # a KeyError's message, without quotes
    assert "Traceback" in log_file.read_text() and "KeyError: 'set lora_r'" in log_file.read_text()


def test_bugs_keep_their_traceback_and_the_debug_switch_keeps_every_one(capsys, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    with pytest.raises(RuntimeError, match="a bug"), user_errors():
        raise RuntimeError("a bug")
    with pytest.raises(ValueError, match="shape"), user_errors():
        in_module("torch.x", "def f():\n    raise ValueError('shape')")()
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(UserError, match="--key=value"), user_errors():
        config_flags(["epochs"])
    with pytest.raises(KeyboardInterrupt), user_errors():
        raise KeyboardInterrupt
    assert capsys.readouterr().err == ""


def test_ctrl_c_is_one_line_and_status_130(capsys, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    with pytest.raises(SystemExit) as exit_info, user_errors(interrupted=lambda: "saved x.pth"):
        raise KeyboardInterrupt
    assert exit_info.value.code == 130 and capsys.readouterr().err == "interrupted: saved x.pth\n"
    with pytest.raises(SystemExit), user_errors(interrupted=lambda: "saved x.pth"):
        raise KeyboardInterrupt("the records are in results/")  # the code that was stopped knows better
    assert capsys.readouterr().err == "interrupted: the records are in results/\n"


def test_config_flags_name_a_value_that_is_not_yaml():
    with pytest.raises(UserError, match=r"--eval_args=\{mode: x is not a YAML value"):
        config_flags(["--eval_args={mode: x"])


def test_a_dataset_folder_without_its_interaction_file_names_the_layout(tmp_path):
    from recbole_llmsrec.config import Config
    from recbole_llmsrec.data.dataset import check_dataset_files

    (tmp_path / "insta").mkdir()
    (tmp_path / "insta" / "insta.item").write_text("item_id:token\ttitle:token_seq\n1\tA\n")
    config = Config(model="SASRec", dataset="insta", config_dict={"data_path": str(tmp_path)})
    with pytest.raises(UserError) as err:
        check_dataset_files(config)
    assert str(err.value).startswith(f"dataset 'insta' not found: {tmp_path / 'insta'} has no insta.inter. "
                                     f"RecBole reads <data_path>/<name>/<name>.inter")


# ---- the commands -------------------------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["--dataset=does-not-exist", "--data_path=nowhere"],
     "error: dataset 'does-not-exist' not found: nowhere/does-not-exist does not exist. RecBole reads "
     "<data_path>/<name>/<name>.inter (and <name>.item, <name>.user if there): set data_path (now 'nowhere') to "
     "the folder that holds does-not-exist/, with --data_path=... or in a config file, or check the dataset name"),
    (["--dataset=tiny", *TINY, "--eval_neg_exclude=foo"],
     "error: eval_neg_exclude must be one of history, recbole (history: sampled evaluation negatives avoid every "
     "item of the user's history; recbole: RecBole's own sampler), not 'foo'"),
])
def test_a_user_error_ends_the_run_with_its_message(tmp_path, args, message):
    done = command([os.path.join(REPO, "run_recbole_llmsrec.py"), "--model=SASRec", *args], tmp_path)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and done.stderr.strip().splitlines()[-1] == message
    assert done.stderr.count(message) == 1 and message not in done.stdout
    (log_file,) = glob.glob(str(tmp_path / "log" / "SASRec" / "*.log"))  # the traceback is in RecBole's log
    assert "Traceback" in open(log_file).read()


def test_an_unreadable_checkpoint_is_a_user_error(tmp_path):
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    done = command([os.path.join(REPO, "run_recbole_llmsrec.py"), "--model=SASRec", "--dataset=tiny", *TINY,
                    "--epochs=1", f"--resume_checkpoint={tmp_path / 'notes.pth'}"], tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: checkpoint ") and "notes.pth" in last and "resume_checkpoint" in last
    assert "delete" not in last.lower()


def test_the_debug_switch_shows_the_traceback(tmp_path):
    args = ["-m", "recbole_llmsrec.data.amazon2023", "--reviews=Nope.jsonl", "--meta=meta_Nope.jsonl", "--name=Nope"]
    done = command(args, tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == "error: Nope.jsonl does not exist"
    debug = command(args, tmp_path, debug=True)
    assert debug.returncode == 1 and "Traceback" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1] == "FileNotFoundError: Nope.jsonl does not exist"


def test_the_leaderboard_reports_a_bad_flag(tmp_path):
    done = command(["-m", "recbole_llmsrec.leaderboard", "--models=SASRec", "--model_config={SASRec: {}}"], tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "error: --model_config is not JSON (Expecting property name enclosed in double quotes: line 1 column 2 "
        "(char 1)): give it as '{\"Model\": {\"key\": value}}'")


def test_the_shuffle_command_reports_a_missing_checkpoint(tmp_path):
    done = command(["-m", "recbole_llmsrec.evaluation.shuffle", "--model_file=nope.pth"], tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == "error: checkpoint file 'nope.pth' does not exist"


def test_ctrl_c_names_the_checkpoint_to_resume_from(tmp_path):
    saved = tmp_path / "saved"
    process = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "run_recbole_llmsrec.py"), "--model=SASRec", "--dataset=tiny", *TINY,
         "--epochs=100000", "--stopping_step=100000", f"--checkpoint_dir={saved}"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={k: v for k, v in os.environ.items() if k != DEBUG_ENV})
    deadline = time.time() + 120
    while process.poll() is None and not glob.glob(str(saved / "SASRec-*.pth")) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # past the first save
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    (checkpoint,) = glob.glob(str(saved / "SASRec-*.pth"))
    assert process.returncode == 130 and "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == (
        f"interrupted: the best checkpoint so far is {checkpoint}; continue with --resume_checkpoint={checkpoint}")


# ---- the leaderboard ----------------------------------------------------------------------------


def test_exit_description_names_the_signal():
    from recbole_llmsrec.leaderboard import exit_description

    assert exit_description(-signal.SIGKILL) == "terminated by signal 9 (SIGKILL); killed: out of memory?"
    assert exit_description(-signal.SIGTERM) == "terminated by signal 15 (SIGTERM)"
    assert exit_description(1) == "exit code 1; its error is above"
    assert exit_description(0) == "it ended without writing its record"


def test_leaderboard_reports_a_model_killed_by_a_signal(tmp_path, monkeypatch):
    from recbole_llmsrec.leaderboard import run_models

    monkeypatch.chdir(tmp_path)

    def kill_the_model():
        deadline = time.time() + 120
        while time.time() < deadline:
            children = multiprocessing.active_children()
            if children:
                os.kill(children[0].pid, signal.SIGKILL)
                return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_the_model, daemon=True)
    killer.start()
    messages = []
    common = {"dataset": "tiny", "data_path": DATA_DIR, "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
              "epochs": 1, "show_progress": False}
    records, failures = run_models(["SASRec"], common, results_dir=str(tmp_path / "results"), log=messages.append)
    killer.join()
    assert records == [] and failures == {"SASRec": "SASRec failed (terminated by signal 9 (SIGKILL); killed: out of memory?)"}
    assert messages[-1].endswith("SASRec: FAILED: SASRec failed (terminated by signal 9 (SIGKILL); killed: out of memory?)")


def test_leaderboard_interrupted_says_where_the_finished_runs_are(tmp_path, monkeypatch):
    from recbole_llmsrec import leaderboard

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(leaderboard, "run_in_process", interrupted)
    common = {"dataset": "tiny", "data_path": DATA_DIR, "load_col": {"inter": ["user_id", "item_id", "timestamp"]}}
    folder = os.path.join(str(tmp_path), "tiny", "runs")
    with pytest.raises(KeyboardInterrupt, match=f"SASRec was stopped; the records of the models finished before are in {folder}/"):
        leaderboard.run_models(["SASRec"], common, results_dir=str(tmp_path), log=lambda message: None)
