"""Tune a model with RecBole's HyperTuning (hyperopt), through this plugin's objective_function.

    python run_hyper.py --model=SASRec --dataset=ml-100k --algo=bayes --max_evals=10

The search space is RecBole's format (one ``name type values`` line per parameter), read from
``--params_file`` or, by default, ``properties/hyper/<Model>.hyper``. Every other ``--key=value``
fixes that config key for all trials. Writes RecBole's usual result file (``--output_file``).
"""

import argparse
import os
import sys

from recbole_llmsrec.cli import config_flags, user_errors
from recbole_llmsrec.compat import recbole_hyper_tuning
from recbole_llmsrec.config import properties_dir
from recbole_llmsrec.quick_start import objective_function


def tune(model, dataset, params_file=None, config_file_list=None, fixed=None, algo="exhaustive",
         max_evals=100, early_stop=10, output_file=None):
    """Run RecBole's ``HyperTuning`` for ``model``; returns it (``best_params``, ``params2result``)."""
    HyperTuning = recbole_hyper_tuning().HyperTuning

    params_file = params_file or os.path.join(properties_dir(), "hyper", f"{model}.hyper")
    if not os.path.isfile(params_file):
        raise FileNotFoundError(
            f"no search space for {model}: write {params_file} (RecBole's format, e.g. "
            f"'learning_rate choice [0.001,0.0005]') or pass --params_file"
        )
    fixed = {**(fixed or {}), "model": model, "dataset": dataset}

    def objective(config_dict, config_file_list):
        return objective_function({**fixed, **config_dict}, config_file_list, saved=True)

    tuner = HyperTuning(objective, params_file=params_file, fixed_config_file_list=config_file_list,
                        algo=algo, max_evals=max_evals, early_stop=early_stop)
    tuner.run()
    if output_file:
        tuner.export_result(output_file=output_file)
    return tuner


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", "-m", default="LLMSRec")
    parser.add_argument("--dataset", "-d", default="ml-100k")
    parser.add_argument("--config_files", default=None, help="fixed config files, separated by spaces")
    parser.add_argument("--params_file", default=None, help="search space (default properties/hyper/<Model>.hyper)")
    parser.add_argument("--algo", default="exhaustive", choices=["exhaustive", "random", "bayes"])
    parser.add_argument("--max_evals", type=int, default=100)
    parser.add_argument("--early_stop", type=int, default=10)
    parser.add_argument("--output_file", default=None, help="default hyper_<Model>_<dataset>.result")
    args, unknown = parser.parse_known_args()
    # --key=value flags that are not ours fix config keys for every trial (values read as YAML)
    fixed = config_flags(flag for flag in unknown if flag.startswith("--") and "=" in flag)
    sys.argv = sys.argv[:1]  # every trial's Config would read them again, per trial
    tuner = tune(
        args.model, args.dataset, args.params_file,
        args.config_files.strip().split(" ") if args.config_files else None, fixed,
        args.algo, args.max_evals, args.early_stop,
        args.output_file or f"hyper_{args.model}_{args.dataset}.result",
    )
    print("best params:", tuner.best_params)
    print("best result:", tuner.params2result[tuner.params2str(tuner.best_params)])


if __name__ == "__main__":
    with user_errors():
        main()
