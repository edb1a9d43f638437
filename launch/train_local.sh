#!/usr/bin/env bash
# Train on this machine, over every local device: adversarial training or HPM fine-tuning.
# Flags after the script go to `python -m hpm_jax.train`.
#   launch/train_local.sh                                   # Fashion-MNIST PGD-AT, small CNN
#   CONFIG=configs/fashion_mnist.py:hpm WORKDIR=/tmp/fm_hpm launch/train_local.sh \
#       --config.init.checkpoint=/tmp/hpm_train/model       # then HPM fine-tuning of that model
#   CONFIG=configs/cifar10.py WORKDIR=/tmp/c10 launch/train_local.sh \
#       --config.init.checkpoint=/tmp/carmon2019
# Running it again with the same WORKDIR resumes from the last checkpoint.
. "$(dirname "$0")/_env.sh"
cd "$ROOT"
# CPU only: split the batch over host devices (on a small CPU this speeds up convolution
# backward passes); accelerators ignore the flag.
export XLA_FLAGS="${XLA_FLAGS:---xla_force_host_platform_device_count=${HOST_DEVICES:-2}}"
exec python -m hpm_jax.train --config="${CONFIG:-configs/fashion_mnist.py}" \
  --workdir="${WORKDIR:-/tmp/hpm_train}" "$@"
