# Sourced by the launch scripts: create or reuse .venv and install what hpm-jax needs.
#   HPM_EXTRAS="test,torch" . launch/_env.sh      # default extras: all (data, train, reports)
# Reinstalls only when pyproject.toml, the extras or HPM_TORCH_INDEX change (a stamp file
# records them).
# torch (the torch extra): `pip install torch==2.13.0` from the configured package index,
# which works on a machine that reaches only package registries. Whether that is the CPU
# build depends on the index: a local or mirrored CPU wheel gives it, PyPI's Linux wheel pulls
# several GB of CUDA libraries. HPM_TORCH_INDEX=https://download.pytorch.org/whl/cpu takes it
# from PyTorch's CPU index instead (pip's --index-url), where that host is reachable.
# HPM_SKIP_INSTALL=1 uses $HPM_VENV (default .venv) as it is, installing nothing (the test
# suite runs the launch scripts so, in the environment it runs in).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${HPM_VENV:-$ROOT/.venv}"
EXTRAS="${HPM_EXTRAS:-all}"

# Fashion-MNIST offline: Debian's dataset-fashion-mnist (best effort; needs root and apt).
if [ "${HPM_SKIP_INSTALL:-0}" != 1 ] && [ ! -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ] \
    && command -v apt-get >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    echo "[env] installing Debian package dataset-fashion-mnist"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) >/dev/null \
      || echo "[env] could not install dataset-fashion-mnist; Fashion-MNIST will need TFDS" >&2
  else
    echo "[env] run 'sudo apt-get install dataset-fashion-mnist' for offline Fashion-MNIST" >&2
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[env] creating $VENV"
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
STAMP="$VENV/.hpm-installed"
TORCH_INDEX="${HPM_TORCH_INDEX:-}"
WANT="$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16) extras=$EXTRAS${TORCH_INDEX:+ torch_index=$TORCH_INDEX}"
if [ "${HPM_SKIP_INSTALL:-0}" != 1 ] && [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  echo "[env] installing hpm-jax${EXTRAS:+[$EXTRAS]} into $VENV"
  "$PY" -m pip install -q --upgrade pip
  if [[ ",$EXTRAS," == *",torch,"* ]]; then
    # torch first, pinned, so that the extra's 'torch>=2.0' finds it installed (see the top).
    "$PY" -m pip install -q "torch==2.13.0" ${TORCH_INDEX:+--index-url "$TORCH_INDEX"}
  fi
  "$PY" -m pip install -q -e "$ROOT${EXTRAS:+[$EXTRAS]}"
  if [[ ",$EXTRAS," == *",torch,"* ]]; then
    # RobustBench's architecture files, loaded by path in the parity tests. Last and without
    # its declared dependencies (torchvision, timm: no CPU wheels here, and not needed).
    "$PY" -m pip install -q --no-deps "robustbench==1.1.1"
  fi
  echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
