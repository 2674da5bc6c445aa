# Sourced by tools/dist_train.sh, dist_test.sh, slurm_train.sh and slurm_test.sh (after ROOT is
# set): the interpreter they start is $PYTHON when set, else the checkout's environment
# ($ROOT/.venv/bin/python, made by `make env`) when it exists, else `python` from the PATH.
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON=$ROOT/.venv/bin/python; else PYTHON=python; fi
fi
