#!/usr/bin/env bash
# Run the whole test suite (4 fake CPU devices), installing what it needs first.
#   launch/test.sh                 # everything
#   launch/test.sh tests/test_convert.py -k pretrained
HPM_EXTRAS="test,torch" . "$(dirname "$0")/_env.sh"
cd "$ROOT"
ruff check --quiet .
# loadfile: a module's fixtures (a trained model, a finished evaluation) are built once, not per worker.
exec python -m pytest -q -n "${HPM_TEST_WORKERS:-2}" --dist loadfile --durations=10 "$@"
