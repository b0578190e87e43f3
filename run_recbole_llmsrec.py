"""Train and evaluate a model with RecBole: this plugin's (LLMSRec, ...) or RecBole's own.

    python run_recbole_llmsrec.py --model=LLMSRec --dataset=ml-100k --epochs=3

Flags follow RecBole's run_recbole.py; any other ``--key=value`` overrides that config key.
"""

import argparse

from recbole_llmsrec.quick_start import run_recbole_llmsrec

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", "-m", type=str, default="LLMSRec", help="name of the model")
    parser.add_argument("--dataset", "-d", type=str, default="ml-100k", help="name of the dataset")
    parser.add_argument("--config_files", type=str, default=None, help="config files, separated by spaces")
    args, _ = parser.parse_known_args()

    config_file_list = args.config_files.strip().split(" ") if args.config_files else None
    run_recbole_llmsrec(model=args.model, dataset=args.dataset, config_file_list=config_file_list)
