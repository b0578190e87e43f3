"""RecBole's distributed training (``nproc``, DistributedDataParallel) on the CPU: two processes over
gloo keep identical parameters while each trains on its own half of the users."""

import ast
import os
import re
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from recbole.utils import init_seed

from recbole_llmsrec.compat import load_recbole_checkpoint
from recbole_llmsrec.config import Config
from recbole_llmsrec.quick_start import _build

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def train_one_process(rank, model_name, config_dict, port, out_dir):
    """One of two processes: train one epoch (per stage), test, and save what the test compares."""
    config = Config(model=model_name, config_dict={
        **config_dict, "local_rank": rank, "nproc": 2, "world_size": 2, "offset": 0, "ip": "localhost", "port": port})
    init_seed(config["seed"], config["reproducibility"])
    _, train_data, valid_data, test_data, model, trainer = _build(config)
    names = trainer.checkpoint_parameter_names()  # every stage's parameters for a staged trainer
    initial = {name: p.detach().clone() for name, p in model.named_parameters() if name in names}
    users = []
    calculate_loss = model.calculate_loss
    model.calculate_loss = lambda interaction: users.extend(interaction["user_id"].tolist()) or calculate_loss(interaction)
    trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    result = trainer.evaluate(test_data, load_best_model=True)
    trained = {name: p.detach().clone() for name, p in model.named_parameters() if name in names}
    resumed_rng = None
    if not hasattr(trainer, "stages"):  # each process resumes its own random streams
        trainer.resume_checkpoint(trainer.saved_model_file)
        resumed_rng = trainer._resume_rng
    torch.save({"initial": initial, "trained": trained, "users": users, "result": dict(result),
                "saved_model_file": trainer.saved_model_file, "train_rows": len(train_data._dataset),
                "resumed_rng": resumed_rng}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.parametrize("model_name", ["LLMSRec", "CoLLM"])  # CoLLM: two stages, each with its own parameters
def test_two_processes_keep_one_model_and_split_the_users(model_name, tiny_config_dict, tmp_path):
    settings = {**tiny_config_dict, "epochs": 1, "collm_lora_epochs": 1, "prompt_history_len": 5,
                "prompt_show_dates": False}
    mp.spawn(train_one_process, args=(model_name, settings, free_port(), str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))

    if model_name == "CoLLM":
        assert any(".lora_" in name for name in rank0["trained"]) and any("mapping" in name for name in rank0["trained"])
    for name, value in rank0["trained"].items():
        assert torch.equal(value, rank1["trained"][name]), f"{name} differs between the processes"
        assert not torch.equal(value, rank0["initial"][name]), f"{name} did not train"
    # each process trained on its own half of the training rows (DistributedSampler); a staged
    # trainer's stages each went through them once
    rows = rank0["train_rows"]
    stages = 2 if model_name == "CoLLM" else 1
    assert len(rank0["users"]) == len(rank1["users"]) == stages * ((rows + 1) // 2)
    assert len(set(rank0["users"]) | set(rank1["users"])) == rows
    # one checkpoint, written by process 0 and read back by both; the metrics are gathered from both
    assert rank0["saved_model_file"] == rank1["saved_model_file"]
    checkpoint = load_recbole_checkpoint(rank0["saved_model_file"])
    for name, value in checkpoint["state_dict"].items():
        assert torch.equal(value, rank0["trained"][name])
    assert rank0["result"] == rank1["result"]
    assert 0.0 <= rank0["result"]["ndcg@10"] <= rank0["result"]["hit@10"] <= 1.0
    if model_name == "LLMSRec":
        # the checkpoint holds both processes' random streams; each resumes its own
        states = checkpoint["rng_state"]
        assert isinstance(states, list) and len(states) == 2
        assert not torch.equal(states[0]["torch"], states[1]["torch"])
        for rank, data in enumerate((rank0, rank1)):
            assert torch.equal(data["resumed_rng"]["torch"], states[rank]["torch"])


def test_run_recbole_llmsrec_with_nproc_2_on_cpu(tiny_config_dict, tmp_path):
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump({**tiny_config_dict, "epochs": 1, "state": "INFO"}))
    done = subprocess.run(
        [sys.executable, os.path.join(REPO, "run_recbole_llmsrec.py"), "--model=LLMSRec", "--dataset=tiny",
         f"--config_files={config_file}", "--nproc=2", f"--port={free_port()}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stdout + done.stderr
    result = ast.literal_eval(re.search(r"test result\S*: (\{.*\})", log).group(1))
    assert 0.0 <= result["ndcg@10"] <= result["hit@10"] <= result["hit@20"] <= 1.0
    assert log.count("test result") == 1  # process 1 logs errors only (RecBole sets its state so)
    (checkpoint,) = [path for path in (tmp_path / "saved").glob("LLMSRec-*.pth") if not path.name.endswith("-latest.pth")]
    assert load_recbole_checkpoint(checkpoint)["config"]["world_size"] == 2
    # the latest checkpoint, written after every validation, holds both processes' random streams too
    latest = load_recbole_checkpoint(str(checkpoint)[: -len(".pth")] + "-latest.pth")
    assert latest["config"]["world_size"] == 2 and len(latest["rng_state"]) == 2
