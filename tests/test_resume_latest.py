"""The latest checkpoint (``save_latest_checkpoint``): written atomically after every validation with the
whole training state, so that a run resumed from it goes on exactly where it was (the same patience
count, best score, learning rate and ``valid_history``) and still tests the run's best; with the tiny
data and a tiny Llama (and a tiny text encoder for A-LLMRec's stages)."""

import glob
import os
import re
import shutil

import pytest
import torch
from recbole.utils import init_seed

from recbole_llmsrec import compat
from recbole_llmsrec.cli import UserError
from recbole_llmsrec.compat import load_recbole_checkpoint
from recbole_llmsrec.config import Config
from recbole_llmsrec.quick_start import _build
from recbole_llmsrec.trainer import latest_checkpoint_file

# 3 epochs of 2 parts each: the best at the end of epoch 0, then none; patience 2 stops at the fifth
SCORES = [0.1, 0.5, 0.4, 0.3, 0.2, 0.9]
SETTINGS = {"epochs": 3, "valid_per_epoch": 2, "stopping_step": 2, "lr_decay_per_valid": 0.5}


def build(config_dict, model="LLMSRec", **overrides):
    config = Config(model=model, config_dict={**config_dict, **overrides})
    init_seed(config["seed"], config["reproducibility"])
    return _build(config)


def cached_teacher(config_dict):
    """The teacher the first build trained and cached: later runs in other folders load it."""
    return glob.glob(os.path.join(config_dict["checkpoint_dir"], "teacher", "SASRec-*.pth"))[0]


class Killed(Exception):
    """Stands for the process ending right after a latest checkpoint was written."""


def score_validations(trainer, scores):
    """Validations compute their metrics as usual, but their valid_score is the next of ``scores``:
    the test chooses which validations bring a new best."""
    valid_epoch, scores = trainer._valid_epoch, iter(scores)

    def scored(data, show_progress=False):
        _, result = valid_epoch(data, show_progress=show_progress)
        return next(scores), result

    trainer._valid_epoch = scored


def kill_after(trainer, validations):
    """End ``fit`` with :class:`Killed` once the latest checkpoint of validation ``validations`` is written."""
    save_latest, written = trainer._save_latest, []

    def save_then_die(*args):
        save_latest(*args)
        written.append(args)
        if len(written) == validations:
            raise Killed

    trainer._save_latest = save_then_die


def outcome(trainer, model, test_data, fit_result):
    """What a finished run leaves: its fit result, validations (their seconds aside), patience count,
    learning rate, losses, trained parameters, and the test of its best checkpoint."""
    names = trainer.checkpoint_parameter_names()
    done = {
        "fit": fit_result,
        "history": [{key: value for key, value in entry.items() if not key.endswith("_seconds")}
                    for entry in trainer.valid_history],
        "cur_step": trainer.cur_step,
        "lr": trainer.optimizer.param_groups[0]["lr"],
        "losses": dict(getattr(trainer, "stage_train_loss", None) or trainer.train_loss_dict),
        "params": {name: p.detach().clone() for name, p in model.named_parameters() if name in names},
    }
    done["test"] = dict(trainer.evaluate(test_data, load_best_model=True))
    return done


def assert_same(again, whole):
    assert again["history"] == whole["history"]
    for key in ("fit", "cur_step", "lr", "losses", "test"):
        assert again[key] == whole[key], key
    assert again["params"].keys() == whole["params"].keys()
    for name, value in whole["params"].items():
        assert torch.equal(again["params"][name], value), name


@pytest.mark.parametrize("accumulation", [1, 3])  # 3: the kill falls inside a group of batches
def test_a_run_resumed_from_its_latest_checkpoint_ends_as_the_uninterrupted_run(tiny_config_dict, tmp_path,
                                                                                 accumulation):
    settings = {**SETTINGS, "gradient_accumulation_steps": accumulation}
    _, train_data, valid_data, test_data, model, trainer = build(tiny_config_dict, **settings)
    score_validations(trainer, SCORES)
    whole = outcome(trainer, model, test_data, trainer.fit(train_data, valid_data, saved=True))
    assert [entry["best"] for entry in whole["history"]] == [True, True, False, False, False]  # stopped early
    lr = tiny_config_dict["learning_rate"]

    # the same run, killed after its third validation: in the middle of epoch 1, one validation after the best
    folder = {"checkpoint_dir": str(tmp_path / "killed"), "teacher_checkpoint": cached_teacher(tiny_config_dict)}
    _, train_data, valid_data, test_data, model, killed = build(tiny_config_dict, **settings, **folder)
    score_validations(killed, SCORES)
    kill_after(killed, 3)
    with pytest.raises(Killed):
        killed.fit(train_data, valid_data, saved=True)
    best_file = killed.saved_model_file
    latest = latest_checkpoint_file(best_file)
    assert latest == best_file[: -len(".pth")] + "-latest.pth"
    checkpoint = load_recbole_checkpoint(latest)
    n = len(train_data)
    assert (checkpoint["epoch"], checkpoint["batches_done"], checkpoint["cur_step"]) == (1, n // 2, 1)
    assert checkpoint["best_checkpoint"] == best_file and load_recbole_checkpoint(best_file)["epoch"] == 0
    assert (checkpoint["accumulated_grads"] is not None) == (n // 2 % accumulation != 0)

    _, train_data, valid_data, test_data, model, resumed = build(
        tiny_config_dict, **settings, **folder, resume_checkpoint=latest)
    # where the killed run was: its patience count, best, learning rate and validations so far
    assert resumed.saved_model_file == best_file
    assert (resumed.cur_step, resumed.best_valid_score, resumed.start_epoch) == (1, 0.5, 1)
    assert resumed.optimizer.param_groups[0]["lr"] == lr * 0.5**3
    assert len(resumed.valid_history) == 3
    score_validations(resumed, SCORES[3:])
    assert_same(outcome(resumed, model, test_data, resumed.fit(train_data, valid_data, saved=True)), whole)


def test_a_resumed_run_that_never_improves_tests_the_best_of_the_run(tiny_config_dict):
    _, train_data, valid_data, test_data, _, trainer = build(tiny_config_dict, epochs=1, valid_per_epoch=2)
    score_validations(trainer, [0.5, 0.4])
    trainer.fit(train_data, valid_data, saved=True)
    best_file = trainer.saved_model_file
    init_seed(trainer.config["seed"], True)  # the test's sampled negatives are drawn as it runs
    best_test = dict(trainer.evaluate(test_data, load_best_model=True))
    with open(best_file, "rb") as f:
        best_bytes = f.read()

    # two more epochs from the latest checkpoint, none better than the first validation
    _, train_data, valid_data, test_data, model, resumed = build(
        tiny_config_dict, epochs=3, valid_per_epoch=2, resume_checkpoint=latest_checkpoint_file(best_file))
    score_validations(resumed, [0.1] * 4)
    resumed.fit(train_data, valid_data, saved=True)
    assert [entry["best"] for entry in resumed.valid_history] == [True, False, False, False, False, False]
    assert resumed.saved_model_file == best_file
    with open(best_file, "rb") as f:
        assert f.read() == best_bytes  # never written again
    trained = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    init_seed(resumed.config["seed"], True)
    assert dict(resumed.evaluate(test_data, load_best_model=True)) == best_test
    assert any(not torch.equal(p, trained[name]) for name, p in model.named_parameters() if p.requires_grad)
    # what the leaderboard and the benchmarks load
    assert resumed.load_model_checkpoint(resumed.saved_model_file)["epoch"] == 0


def test_a_run_that_had_stopped_early_trains_no_further(tiny_config_dict):
    _, train_data, valid_data, test_data, model, trainer = build(
        tiny_config_dict, epochs=3, valid_per_epoch=2, stopping_step=0)
    score_validations(trainer, [0.5, 0.4])  # patience 0: the second validation stops the run
    trainer.fit(train_data, valid_data, saved=True)
    assert len(trainer.valid_history) == 2

    _, train_data, valid_data, test_data, model, resumed = build(
        tiny_config_dict, epochs=3, valid_per_epoch=2, stopping_step=0,
        resume_checkpoint=latest_checkpoint_file(trainer.saved_model_file))
    trained = []
    calculate_loss = model.calculate_loss
    model.calculate_loss = lambda interaction: trained.append(1) or calculate_loss(interaction)
    assert resumed.fit(train_data, valid_data, saved=True) == (0.5, trainer.best_valid_result)
    assert trained == [] and len(resumed.valid_history) == 2


def test_a_latest_checkpoint_finds_its_best_next_to_it_or_says_it_is_gone(tiny_config_dict, tmp_path):
    _, train_data, valid_data, _, _, trainer = build(tiny_config_dict, epochs=1)
    trainer.fit(train_data, valid_data, saved=True)
    best_file, latest = trainer.saved_model_file, latest_checkpoint_file(trainer.saved_model_file)

    # both moved to another folder: the best is found next to the latest
    moved = tmp_path / "moved"
    moved.mkdir()
    for path in (best_file, latest):
        shutil.move(path, moved)
    moved_best, moved_latest = str(moved / os.path.basename(best_file)), str(moved / os.path.basename(latest))
    *_, resumed = build(tiny_config_dict, epochs=2, resume_checkpoint=moved_latest)
    assert resumed.saved_model_file == moved_best

    os.remove(moved_best)
    name = re.escape(repr(os.path.basename(best_file)))
    with pytest.raises(UserError, match=f"best checkpoint {re.escape(repr(best_file))} is missing.*put {name} back"
                                        f".*or set resume_checkpoint to a best checkpoint"):
        build(tiny_config_dict, epochs=2, resume_checkpoint=moved_latest)


def test_the_latest_checkpoint_is_written_atomically_after_every_validation(tiny_config_dict, monkeypatch):
    writes = []
    atomic_torch_save = compat.atomic_torch_save

    def recorded(state, path):
        writes.append((str(path), len(state["valid_history"]) if "valid_history" in state else None))
        atomic_torch_save(state, path)

    monkeypatch.setattr(compat, "atomic_torch_save", recorded)
    _, train_data, valid_data, _, _, trainer = build(tiny_config_dict, epochs=2, valid_per_epoch=2)
    trainer.fit(train_data, valid_data, saved=True)
    latest = latest_checkpoint_file(trainer.saved_model_file)
    folder = os.path.dirname(latest)
    ours = [(path, count) for path, count in writes if os.path.dirname(path) == folder]  # the teacher's aside
    # each validation writes it once, after its entry joins valid_history (and a new best before it)
    assert [count for path, count in ours if path == latest] == [1, 2, 3, 4]
    assert {path for path, _ in ours} == {latest, trainer.saved_model_file}
    assert not [name for name in os.listdir(folder) if name.startswith(".tmp-")]

    checkpoint = load_recbole_checkpoint(latest)
    assert checkpoint["latest"] and checkpoint["best_checkpoint"] == trainer.saved_model_file
    assert (checkpoint["epoch"], checkpoint["batches_done"]) == (1, None)  # after the end of epoch 1
    assert checkpoint["valid_history"] == trainer.valid_history
    assert (checkpoint["cur_step"], checkpoint["best_valid_score"]) == (trainer.cur_step, trainer.best_valid_score)
    assert checkpoint["best_valid_result"] == trainer.best_valid_result
    assert set(checkpoint["state_dict"]) == trainer.checkpoint_parameter_names()  # trained parameters only
    assert "rng_state" in checkpoint and checkpoint["optimizer"]["state"]

    # off: the best checkpoint alone, as RecBole
    writes.clear()
    _, train_data, valid_data, _, _, trainer = build(tiny_config_dict, epochs=1, save_latest_checkpoint=False)
    trainer.fit(train_data, valid_data, saved=True)
    assert [path for path, _ in writes if os.path.dirname(path) == folder] == [trainer.saved_model_file]
    assert not os.path.exists(latest_checkpoint_file(trainer.saved_model_file))
    with pytest.raises(ValueError, match="save_latest_checkpoint must be True or False"):
        build(tiny_config_dict, save_latest_checkpoint="yes")


def test_a_staged_run_resumes_within_its_stage(tiny_config_dict, tiny_encoder_path, tmp_path):
    config = {**tiny_config_dict, "text_encoder_path": tiny_encoder_path, "allmrec_latent_dim": 8,
              "prompt_show_dates": False, "llm_head_cache": False}
    settings = {"model": "ALLMRec", "allmrec_stage1_epochs": 2, "allmrec_stage1_learning_rate": 0.01, "epochs": 2,
                "valid_per_epoch": 2, "stopping_step": 2}
    # stage 1: its best at the third validation; stage 2: at its first, then none
    scores = [0.5, 0.4, 0.6, 0.3, 0.3, 0.2, 0.25, 0.1]
    _, train_data, valid_data, test_data, model, trainer = build(config, **settings)
    score_validations(trainer, scores)
    whole = outcome(trainer, model, test_data, trainer.fit(train_data, valid_data, saved=True))
    assert [entry["stage"] for entry in whole["history"]] == ["stage1"] * 4 + ["stage2"] * 4

    # killed after the second validation (stage 1, no new best), or the seventh (inside stage 2's second epoch)
    for kill, stage in ((2, "stage1"), (7, "stage2")):
        folder = {"checkpoint_dir": str(tmp_path / f"killed{kill}"), "teacher_checkpoint": cached_teacher(config)}
        _, train_data, valid_data, test_data, model, killed = build(config, **settings, **folder)
        score_validations(killed, scores)
        kill_after(killed, kill)
        with pytest.raises(Killed):
            killed.fit(train_data, valid_data, saved=True)
        assert killed.saved_model_file.endswith(f"-{stage}.pth")
        latest = latest_checkpoint_file(killed.saved_model_file)
        assert latest.endswith(f"-{stage}-latest.pth") and load_recbole_checkpoint(latest)["stage"] == stage

        _, train_data, valid_data, test_data, model, resumed = build(
            config, **settings, **folder, resume_checkpoint=latest)
        score_validations(resumed, scores[kill:])
        again = outcome(resumed, model, test_data, resumed.fit(train_data, valid_data, saved=True))
        assert_same(again, whole)
        assert resumed.saved_model_file == killed.saved_model_file.replace(f"-{stage}.pth", "-stage2.pth")


def test_ctrl_c_names_the_latest_checkpoint(tmp_path):
    import importlib.util

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location("run_recbole_llmsrec", os.path.join(repo, "run_recbole_llmsrec.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    best, latest = tmp_path / "Tiny-1.pth", tmp_path / "Tiny-1-latest.pth"
    best.write_bytes(b"best")
    compat.remember_checkpoint("TinyModel", str(best))
    assert script.resume_hint("TinyModel") == (
        f"the best checkpoint so far is {best}; continue with --resume_checkpoint={best}")
    latest.write_bytes(b"latest")
    compat.remember_checkpoint("TinyModel", str(latest), latest=True)
    assert script.resume_hint("TinyModel") == (
        f"the latest checkpoint is {latest} (the best so far: {best}); continue with --resume_checkpoint={latest}")
