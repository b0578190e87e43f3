"""Train and evaluate a model with RecBole: this plugin's (LLMSRec, ...) or RecBole's own.

    python run_recbole_llmsrec.py --model=LLMSRec --dataset=ml-100k --epochs=3
    python run_recbole_llmsrec.py --model=LLMSRec --nproc=2          # DistributedDataParallel, 2 processes

Flags follow RecBole's run_recbole.py; any other ``--key=value`` overrides that config key. A
mistake in the settings or data ends the run with its message (``RECBOLE_LLMSREC_DEBUG=1`` shows
the traceback); Ctrl-C names the checkpoint to resume from.
"""

import argparse

from recbole_llmsrec.cli import user_errors
from recbole_llmsrec.compat import latest_checkpoint, saved_checkpoint
from recbole_llmsrec.quick_start import run


def resume_hint(model, nproc=1, world_size=-1):
    """What an interrupted run has saved, and how to go on from it."""
    if nproc != 1 or world_size > 0:  # process 0, not this one, writes the checkpoints
        return ""
    path, latest = saved_checkpoint(model), latest_checkpoint(model)
    if latest is not None:  # written after every validation: the run goes on exactly from there
        return (f"the latest checkpoint is {latest} (the best so far: {path}); "
                f"continue with --resume_checkpoint={latest}")
    if path is None:
        return "no checkpoint was saved yet (one is written whenever validation improves)"
    return f"the best checkpoint so far is {path}; continue with --resume_checkpoint={path}"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", "-m", type=str, default="LLMSRec", help="name of the model")
    parser.add_argument("--dataset", "-d", type=str, default="ml-100k", help="name of the dataset")
    parser.add_argument("--config_files", type=str, default=None, help="config files, separated by spaces")
    parser.add_argument("--nproc", type=int, default=1, help="processes on this machine (one per GPU, or CPU processes)")
    parser.add_argument("--ip", type=str, default="localhost", help="address of the process with rank 0")
    parser.add_argument("--port", type=str, default="5678", help="port of the process with rank 0")
    parser.add_argument("--world_size", type=int, default=-1, help="processes on all machines (default: nproc)")
    parser.add_argument("--group_offset", type=int, default=0, help="rank of this machine's first process")
    args, _ = parser.parse_known_args()

    config_file_list = args.config_files.strip().split(" ") if args.config_files else None
    with user_errors(interrupted=lambda: resume_hint(args.model, args.nproc, args.world_size)):
        run(model=args.model, dataset=args.dataset, config_file_list=config_file_list, nproc=args.nproc,
            world_size=args.world_size, ip=args.ip, port=args.port, group_offset=args.group_offset)
