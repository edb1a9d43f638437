#!/usr/bin/env bash
# The main job on its embedded default: Fashion-MNIST (offline), small CNN, sharded training,
# evaluation, Orbax checkpoint. Extra flags go to the program, e.g. --config.train.num_steps=100
#   launch/demo.sh
#   WORKDIR=/tmp/run1 launch/demo.sh --config.train.num_steps=100
. "$(dirname "$0")/_env.sh"
cd "$ROOT"
# Two host devices: on a small CPU, splitting the batch speeds up convolution backward passes.
export XLA_FLAGS="${XLA_FLAGS:---xla_force_host_platform_device_count=2}"
exec python -m hpm_jax.demo --config=configs/fashion_mnist.py --workdir="${WORKDIR:-/tmp/hpm_demo}" "$@"
