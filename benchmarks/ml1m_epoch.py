"""One LLMSRec training epoch, timed, beside its floor, with a breakdown of where the time goes.

RecBole's own ``Trainer._train_epoch`` runs one epoch (every training user once). Around it the
script records, per step: the LLM's forward calls (tokens, real and padded, and their time), the
rest of ``calculate_loss`` (prompt building, injection, MLPs, teacher, sampling), the backward
pass, the optimiser step, and what is left between steps (RecBole's loader and loop). Every
``--floor_every``-th step is followed, outside the epoch's clock, by the floor for the same token
batches (the frozen LLM's forward and backward with ``inputs_embeds`` requiring grad); the floor
of the whole epoch is estimated from those steps in proportion to padded tokens. ``--profile_step``
also records one step with torch's profiler (top operators by self time).

The default dataset is ML-1M (6,040 users): fetch it first with
``python -m recbole_llmsrec.data.fetch_ml1m`` (writes ``dataset/ml-1m/``).

    python benchmarks/ml1m_epoch.py --dataset=ml-1m --llm_path=smollm2-135m --floor_every=10

Writes ``benchmarks/results/epoch_<dataset>.json``, and rewrites it, marked partial, every
``--report_every`` steps. An epoch longer than one sitting can be timed in parts: a later run with
the same flags and ``--continue_from=<that partial report>`` draws the same shuffled batches,
skips those already timed, times the rest and adds them up (the report's ``runs`` lists each
part). The continuing run starts from freshly initialised MLPs, not the earlier run's: a step's
cost is the frozen LLM's over the step's tokens, which the trained weights do not change.
"""

import contextlib
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import REPO, parser, report_head, report_path, start, write_report  # noqa: E402
from step_floor import (  # noqa: E402
    LLMCalls, bare_pass, build_llmsrec, peak_memory_mb, quick_teacher, release_memory, sync, token_counts,
)


class StepRange:
    """Batches ``start`` to ``stop`` of a RecBole loader (its other attributes pass through).

    The batches before ``start`` are drawn and dropped: RecBole's training loader shuffles with its
    own generator, seeded by ``seed``, so a new process draws the same batches in the same order and
    a continued epoch times the steps the earlier run did not reach.
    """

    def __init__(self, loader, start, stop):
        self.loader, self.start, self.stop = loader, start, min(stop, len(loader))

    def __iter__(self):
        for index, batch in enumerate(self.loader):
            if index == self.stop:
                return
            if index >= self.start:
                yield batch

    def __len__(self):
        return max(self.stop - self.start, 0)

    def __getattr__(self, name):
        return getattr(self.loader, name)


class EpochClock:
    """Splits each training step of ``Trainer._train_epoch`` into its parts, and runs the floor."""

    def __init__(self, model, optimizer, device, floor_every, on_step=None, first_step=0):
        self.model, self.optimizer, self.device, self.floor_every = model, optimizer, device, floor_every
        self.on_step = on_step  # called after each step (outside the epoch's clock), e.g. to save a report
        self.on_step_seconds = 0.0
        self.calls = LLMCalls(model)
        self.parts = {"between_steps": 0.0, "llm_forward": 0.0, "forward_rest": 0.0, "backward": 0.0, "optimizer": 0.0}
        self.steps, self.real, self.padded = first_step, 0, 0  # steps counts from the epoch's start
        self.sampled = {"steps": 0, "full_seconds": 0.0, "floor_seconds": 0.0, "padded_tokens": 0, "real_tokens": 0}
        self.floor_seconds_total = 0.0
        self._last = None

    def now(self):
        sync(self.device)
        return time.perf_counter()

    @contextlib.contextmanager
    def installed(self):
        calculate_loss, step = self.model.calculate_loss, self.optimizer.step

        def timed_loss(interaction):
            begin = self.now()
            if self._last is not None:
                self.parts["between_steps"] += begin - self._last
            self._step_start = begin
            losses = calculate_loss(interaction)
            self._forward_end = self.now()
            return losses

        def timed_step(*args, **kwargs):
            begin = self.now()
            result = step(*args, **kwargs)
            end = self.now()
            batches, llm_seconds = self.calls.take()
            forward = self._forward_end - self._step_start
            self.parts["llm_forward"] += llm_seconds
            self.parts["forward_rest"] += forward - llm_seconds
            self.parts["backward"] += begin - self._forward_end
            self.parts["optimizer"] += end - begin
            real, padded = token_counts(batches)
            self.real, self.padded = self.real + real, self.padded + padded
            self.steps += 1
            if self.floor_every and self.steps % self.floor_every == 1 % self.floor_every:
                release_memory(self.device)
                floor_begin = self.now()
                bare_pass(self.model.llm, batches, backward=True)
                floor = self.now() - floor_begin
                del batches
                release_memory(self.device)
                self.sampled["steps"] += 1
                self.sampled["full_seconds"] += end - self._step_start
                self.sampled["floor_seconds"] += floor
                self.sampled["padded_tokens"] += padded
                self.sampled["real_tokens"] += real
                self.floor_seconds_total += self.now() - end
            if self.on_step is not None:
                hook_begin = self.now()
                self.on_step(self)
                self.on_step_seconds += self.now() - hook_begin
            self._last = self.now()
            return result

        self.model.calculate_loss, self.optimizer.step = timed_loss, timed_step
        try:
            with self.calls.recording():
                yield self
        finally:
            del self.model.calculate_loss, self.optimizer.step


def profile_one_step(model, trainer, batch, device, rows=15):
    """torch's profiler over one training step: the top operators by self time, as rows."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    model.train()
    interaction = batch.to(device)
    with profile(activities=activities) as prof:
        trainer.optimizer.zero_grad()
        sum(model.calculate_loss(interaction)).backward()
        trainer.optimizer.step()
        sync(device)
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort_by, row_limit=rows)
    events = sorted(prof.key_averages(), key=lambda e: -getattr(e, sort_by))[:rows]
    total = sum(getattr(e, sort_by) for e in prof.key_averages())
    return table, [{"op": e.key, "self_seconds": getattr(e, sort_by) / 1e6, "share": getattr(e, sort_by) / total,
                    "calls": e.count} for e in events]


# the ``epoch`` of a report with no steps: what a run that continues nothing carries over
NOTHING_CARRIED = {"seconds": 0.0, "real_tokens": 0, "padded_tokens": 0, "peak_memory_mb": 0.0,
                   "where_the_time_goes": {}, "floor_sampled": {}}


def epoch_summary(clock, wall, batch_size, device, carried):
    """What ``clock`` measured over ``wall`` seconds (the floor steps and report writing taken out),
    added to ``carried``, the ``epoch`` of an earlier report whose steps this run continues
    (``NOTHING_CARRIED`` when it continues none)."""
    epoch_here = wall - clock.floor_seconds_total - clock.on_step_seconds
    parts = dict(clock.parts)
    parts["between_steps"] += epoch_here - sum(parts.values())  # before the first step and after the last
    parts = {name: s + carried["where_the_time_goes"].get(name, {}).get("seconds", 0.0) for name, s in parts.items()}
    sampled = {name: value + carried["floor_sampled"].get(name, 0) for name, value in clock.sampled.items()}
    epoch = epoch_here + carried["seconds"]
    real, padded = clock.real + carried["real_tokens"], clock.padded + carried["padded_tokens"]
    floor_estimate = sampled["floor_seconds"] * padded / sampled["padded_tokens"] if sampled["steps"] else None
    return {
        "steps": clock.steps, "seconds": epoch, "seconds_per_user": epoch / (clock.steps * batch_size),
        "real_tokens": real, "padded_tokens": padded, "padding_share": 1 - real / padded,
        "real_tokens_per_s": real / epoch, "padded_tokens_per_s": padded / epoch,
        "where_the_time_goes": {name: {"seconds": s, "share": s / epoch} for name, s in parts.items()},
        "floor_sampled": sampled,
        "floor_epoch_estimate_seconds": floor_estimate,
        "ratio_to_floor": epoch / floor_estimate if floor_estimate else None,
        "ratio_to_floor_sampled_steps": sampled["full_seconds"] / sampled["floor_seconds"] if sampled["steps"] else None,
        "peak_memory_mb": max(peak_memory_mb(device), carried["peak_memory_mb"]),
    }


def flag_value(command, name):
    """The value of ``--name=`` in a recorded command line (None if absent)."""
    for word in command.split():
        if word.startswith(f"--{name}="):
            return word.split("=", 1)[1]
    return None


# what has to match for one run's steps to continue another's
CONTINUE_KEYS = ("dataset", "seed", "llmsrec_overrides", "users", "items", "prompt_show_dates",
                 "prompt_history_len", "train_batch_size", "llm_dtype", "device", "torch_threads")


def load_continued(path, report, args):
    """The partial report at ``path``, checked against this run's ``report`` and flags."""
    with open(path) as f:
        earlier = json.load(f)
    if "partial" not in earlier:
        raise SystemExit(f"{path} is a finished epoch, not a partial one: there is nothing to continue")
    mismatched = [key for key in CONTINUE_KEYS if earlier.get(key) != report.get(key)]
    mismatched += [flag for flag, value in (("llm_path", args.llm_path), ("floor_every", str(args.floor_every)),
                                                           ("teacher_checkpoint", args.teacher_checkpoint))
                   if flag_value(earlier["command"], flag) != value]
    if mismatched:
        raise SystemExit(f"{path} was measured with other settings ({', '.join(mismatched)}): "
                         f"run with the flags of its command, {earlier['command']}")
    return earlier


def run_record(report, first, last, epoch_seconds):
    """One process's share of a (possibly continued) epoch, for the report's ``runs``."""
    return {"date": report["date"], "machine": report["machine"], "torch_threads": report["torch_threads"],
            "command": report["command"], "steps": [first + 1, last], "seconds": epoch_seconds}


def main():
    flags = parser(__doc__)
    flags.set_defaults(dataset="ml-1m")
    flags.add_argument("--llm_path", default="smollm2-135m")
    flags.add_argument("--floor_every", type=int, default=10, help="time the floor after every N-th step (0: never)")
    flags.add_argument("--max_steps", type=int, default=0, help="stop the epoch at step N, leaving a partial report (0: the whole epoch)")
    flags.add_argument("--report_every", type=int, default=25,
                       help="rewrite the report, marked partial, every N steps (0: only at the end)")
    flags.add_argument("--continue_from", default="",
                       help="a partial report of this script: time the steps it did not reach, and add them to it")
    flags.add_argument("--profile_step", action="store_true", help="profile one extra step with torch.profiler")
    flags.add_argument("--teacher_checkpoint", default="", help="a SASRec checkpoint; empty: a one-epoch teacher")
    flags.add_argument("--llmsrec_config", default="{}", help="JSON dict of LLMSRec config overrides")
    args = flags.parse_args()
    if args.continue_from:  # relative to where the command ran (start() moves into the work folder)
        args.continue_from = os.path.abspath(args.continue_from)
    common = start(args)
    settings = {**common, "llm_path": args.llm_path, **quick_teacher(common, args.teacher_checkpoint),
                **json.loads(args.llmsrec_config)}
    try:
        config, (_, train_data, _, _, model, trainer) = build_llmsrec(settings)
    except (FileNotFoundError, ValueError) as err:
        if args.dataset == "ml-1m":
            raise SystemExit(f"{err}\nML-1M is not here: run `python -m recbole_llmsrec.data.fetch_ml1m` first")
        raise
    device = config["device"]
    report = report_head(args, "ml1m_epoch.py", [
        f"--llm_path={args.llm_path}", f"--floor_every={args.floor_every}", f"--max_steps={args.max_steps}",
        f"--report_every={args.report_every}",
        *([f"--continue_from={os.path.relpath(args.continue_from, REPO)}"] if args.continue_from else []),
        f"--teacher_checkpoint={args.teacher_checkpoint}", f"--llmsrec_config='{args.llmsrec_config}'"]
        + (["--profile_step"] if args.profile_step else []))
    del report["models"]
    report.update(device=str(device), llmsrec_overrides=json.loads(args.llmsrec_config),
                  users=len(train_data._dataset), items=model.n_items - 1,
                  prompt_show_dates=config["prompt_show_dates"], prompt_history_len=config["prompt_history_len"],
                  train_batch_size=config["train_batch_size"], llm_dtype=config["llm_dtype"])
    import torch

    report["torch_threads"] = torch.get_num_threads()
    earlier = load_continued(args.continue_from, report, args) if args.continue_from else None
    carried = earlier["epoch"] if earlier else NOTHING_CARRIED
    first = earlier["partial"]["steps_done"] if earlier else 0
    epoch_data = StepRange(train_data, first, args.max_steps or len(train_data))
    earlier_runs = (earlier.get("runs") or [run_record(earlier, 0, first, carried["seconds"])]) if earlier else []
    if earlier:
        report["continued_from"] = {"command": earlier["command"], "date": earlier["date"], "steps_done": first}

    out = report_path(args, "epoch")
    last_step = first + len(epoch_data)

    def with_runs(summary):
        here = summary["seconds"] - carried["seconds"]
        return earlier_runs + [run_record(report, first, summary["steps"], here)]

    def progress(steps):  # the mark of a partial report
        return {"steps_done": steps, "steps_in_epoch": len(train_data)}

    def save_partial(clock):  # a killed run still leaves the steps it timed, marked partial
        if args.report_every and clock.steps % args.report_every == 0 and clock.steps < last_step:
            partial = dict(report, partial=progress(clock.steps))
            partial["epoch"] = epoch_summary(clock, clock.now() - begin, config["train_batch_size"], device, carried)
            partial["runs"] = with_runs(partial["epoch"])
            write_report(partial, out)

    clock = EpochClock(model, trainer.optimizer, device, args.floor_every, on_step=save_partial, first_step=first)
    with clock.installed():
        begin = clock.now()
        trainer._train_epoch(epoch_data, 0, show_progress=config["show_progress"])
        wall = clock.now() - begin
    report["epoch"] = epoch_summary(clock, wall, config["train_batch_size"], device, carried)
    report["runs"] = with_runs(report["epoch"])
    if last_step < len(train_data):  # --max_steps: a partial epoch, which a later run can continue
        report["partial"] = progress(last_step)
    print(json.dumps(report["epoch"], indent=1), flush=True)
    if args.profile_step:
        table, rows = profile_one_step(model, trainer, next(iter(train_data)), device)
        print(table, flush=True)
        report["profile_one_step"] = rows
    write_report(report, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
