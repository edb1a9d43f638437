#!/usr/bin/env bash
# The main job on its embedded default, Fashion-MNIST (offline) with the small CNN:
# PGD-AT -> HPM fine-tuning -> sensitivity analysis -> AutoAttack (FC, l2-EMA) and MSA (HPM),
# then a table of clean / AutoAttack / MSA accuracy. Each stage is skipped when its output is in
# WORKDIR, so a killed demo started again resumes. Extra flags go to the program (and to both
# training stages), e.g. --config.evaluation.num_examples=1000
#   launch/demo.sh
#   WORKDIR=/tmp/run1 launch/demo.sh --config.evaluation.surrogates="('fc','ste')"
. "$(dirname "$0")/_env.sh"
cd "$ROOT"
# Two host devices: on a small CPU, splitting the batch speeds up convolution backward passes.
export XLA_FLAGS="${XLA_FLAGS:---xla_force_host_platform_device_count=2}"
exec python -m hpm_jax.demo --config=configs/fashion_mnist.py --workdir="${WORKDIR:-/tmp/hpm_demo}" "$@"
