"""The epoch benchmark (benchmarks/ml1m_epoch.py): an epoch timed in two runs adds up to one epoch."""

import json
import os
import sys

import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


@pytest.fixture
def epoch_script(monkeypatch, tiny_config_dict, tmp_path):
    monkeypatch.syspath_prepend(BENCHMARKS)
    import ml1m_epoch

    settings = {key: value for key, value in tiny_config_dict.items() if key not in ("llm_path", "checkpoint_dir")}

    def run(name, *flags, floor_every=3):
        out = str(tmp_path / f"{name}.json")
        monkeypatch.setattr(sys, "argv", [
            "ml1m_epoch.py", "--dataset=tiny", f"--llm_path={tiny_config_dict['llm_path']}",
            f"--floor_every={floor_every}", f"--workdir={tmp_path / 'work'}", f"--out={out}",
            f"--config={json.dumps(settings)}", *flags])
        ml1m_epoch.main()
        with open(out) as f:
            return out, json.load(f)

    return ml1m_epoch, run, settings


def test_a_new_process_draws_the_same_training_batches(epoch_script, tiny_llm_path, tmp_path, monkeypatch):
    ml1m_epoch, _, settings = epoch_script
    from step_floor import build_llmsrec

    monkeypatch.chdir(tmp_path)
    settings = {**settings, "llm_path": tiny_llm_path, "checkpoint_dir": str(tmp_path / "saved")}
    loaders = [build_llmsrec(settings)[1][1] for _ in range(2)]
    user = loaders[0].config["USER_ID_FIELD"]
    whole = [batch[user].tolist() for batch in loaders[0]]
    assert len(whole) > 4 and sorted(sum(whole, [])) != sum(whole, [])  # several batches, shuffled
    rest = [batch[user].tolist() for batch in ml1m_epoch.StepRange(loaders[1], 3, len(whole))]
    assert rest == whole[3:]


def test_an_epoch_timed_in_two_runs_adds_up(epoch_script):
    _, run, _ = epoch_script
    _, whole = run("whole")
    part_file, part = run("part", "--max_steps=3")
    _, rest = run("rest", f"--continue_from={part_file}")

    steps = whole["epoch"]["steps"]
    assert "partial" not in whole and "partial" not in rest
    assert part["partial"] == {"steps_done": 3, "steps_in_epoch": steps} and part["epoch"]["steps"] == 3
    assert rest["epoch"]["steps"] == steps and rest["continued_from"]["steps_done"] == 3
    assert [r["steps"] for r in rest["runs"]] == [[1, 3], [4, steps]]
    assert sum(r["seconds"] for r in rest["runs"]) == pytest.approx(rest["epoch"]["seconds"])
    assert rest["runs"][0]["seconds"] == pytest.approx(part["epoch"]["seconds"])
    # the floor is timed after steps 1, 4, 7, ... of the epoch, whichever run times them
    assert rest["epoch"]["floor_sampled"]["steps"] == whole["epoch"]["floor_sampled"]["steps"] == len(range(1, steps + 1, 3))
    assert part["epoch"]["real_tokens"] < rest["epoch"]["real_tokens"] <= rest["epoch"]["padded_tokens"]
    shares = sum(p["share"] for p in rest["epoch"]["where_the_time_goes"].values())
    assert shares == pytest.approx(1.0)


def test_continuing_needs_the_same_settings_and_a_partial_report(epoch_script):
    _, run, _ = epoch_script
    part_file, _ = run("part", "--max_steps=2")
    with pytest.raises(SystemExit, match="other settings \\(floor_every\\).*--floor_every=3"):
        run("other", f"--continue_from={part_file}", floor_every=2)
    whole_file, _ = run("whole")
    with pytest.raises(SystemExit, match="nothing to continue"):
        run("again", f"--continue_from={whole_file}")
