#!/usr/bin/env bash
# Train, evaluate or run a study on a Cloud TPU VM or pod slice: create it, install hpm-jax
# on every worker, mount the bucket that holds the data and the workdir, run hpm_jax.train
# (or hpm_jax.evaluate, hpm_jax.study) on all workers at once (one JAX process per host,
# joined by jax.distributed), then delete the TPU.
#
#   launch/tpu.sh --tpu=hpm-v4 --zone=us-central2-b --accelerator=v4-32 --bucket=my-bucket \
#       --config=configs/cifar10.py --workdir=runs/c10_wrn_hpm \
#       -- --config.init.checkpoint=/mnt/my-bucket/carmon2019
#   launch/tpu.sh --program=evaluate --checkpoint=runs/c10_wrn_hpm/model ... \
#       --config=configs/cifar10.py --workdir=runs/c10_wrn_hpm_eval    # AutoAttack / MSA
#   launch/tpu.sh --program=study --config=configs/fashion_mnist_study.py ... \
#       --workdir=runs/study -- --config.init.checkpoint=/mnt/my-bucket/runs/at/model
#   launch/tpu.sh ... --dry-run        # check the config here, print the commands, run nothing
#   launch/tpu.sh ... --keep           # leave the TPU up afterwards (rerun to resume)
#
# An evaluation splits the fixed batches over the hosts (each attacks whole batches on its
# own chips; process 0 writes the report); --checkpoint is the model directory inside the
# bucket, or pass `-- --robustbench=NAME --model_dir=/mnt/BUCKET/models` instead.
#
# The bucket is mounted with gcsfuse at /mnt/BUCKET on every worker: --workdir and
# --data_dir are paths inside it (TFDS datasets prepared as array_record under
# --data_dir, default tensorflow_datasets). Checkpoints land in the bucket, so a preempted or
# failed run resumes when started again with the same --workdir.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

TPU="" ZONE="" PROJECT="" ACCELERATOR="v4-8" VERSION="tpu-ubuntu2204-base" BUCKET=""
CONFIG="" WORKDIR="" DATA_DIR="tensorflow_datasets" DRY_RUN=0 KEEP=0 SPOT=0
PROGRAM="train" CHECKPOINT=""
EXTRA=()
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit "${1:-0}"; }
while [ "$#" -gt 0 ]; do
  arg="$1"; shift
  case "$arg" in
    --) EXTRA=("$@"); break ;;  # the rest goes to hpm_jax.PROGRAM
    --tpu=*) TPU="${arg#*=}" ;;
    --zone=*) ZONE="${arg#*=}" ;;
    --project=*) PROJECT="${arg#*=}" ;;
    --accelerator=*) ACCELERATOR="${arg#*=}" ;;
    --version=*) VERSION="${arg#*=}" ;;
    --bucket=*) BUCKET="${arg#*=}"; BUCKET="${BUCKET#gs://}" ;;
    --config=*) CONFIG="${arg#*=}" ;;
    --workdir=*) WORKDIR="${arg#*=}" ;;
    --data_dir=*) DATA_DIR="${arg#*=}" ;;
    --program=*) PROGRAM="${arg#*=}" ;;
    --checkpoint=*) CHECKPOINT="${arg#*=}" ;;
    --spot) SPOT=1 ;;
    --keep) KEEP=1 ;;
    --dry-run) DRY_RUN=1 ;;
    -h|--help) usage 0 ;;
    *) echo "tpu.sh: unknown argument $arg" >&2; usage 2 ;;
  esac
done
for required in TPU ZONE BUCKET CONFIG WORKDIR; do
  if [ -z "${!required}" ]; then
    echo "tpu.sh: --$(echo "$required" | tr '[:upper:]' '[:lower:]') is required" >&2
    usage 2
  fi
done
case "$CONFIG" in configs/*) ;; *) echo "tpu.sh: --config must be a file under configs/" >&2; exit 2 ;; esac
case "$PROGRAM" in
  train)
    if [ -n "$CHECKPOINT" ]; then
      echo "tpu.sh: --checkpoint is for --program=evaluate; training starts from" \
        "-- --config.init.checkpoint=/mnt/$BUCKET/DIR" >&2
      exit 2
    fi ;;
  evaluate)
    if [ -z "$CHECKPOINT" ] && [[ " ${EXTRA[*]-} " != *" --robustbench"* ]]; then
      echo "tpu.sh: --program=evaluate needs --checkpoint=DIR (the model directory inside" \
        "the bucket, e.g. runs/c10_wrn_hpm/model) or -- --robustbench=NAME" >&2
      exit 2
    fi ;;
  study)
    if [ -n "$CHECKPOINT" ]; then
      echo "tpu.sh: --program=study fine-tunes -- --config.init.checkpoint=/mnt/$BUCKET/DIR" \
        "(the FC model every point starts from), not --checkpoint" >&2
      exit 2
    fi ;;
  *) echo "tpu.sh: --program must be train, evaluate or study, got '$PROGRAM'" >&2; exit 2 ;;
esac

# 0. The config, loaded and checked here before anything is created (--dry-run included): a
# misspelt key, a bad value or a missing --config.init.checkpoint fails now, in seconds, as one
# line, not after a pod slice is up. Needs hpm-jax on this machine: .venv (launch/_env.sh makes
# it) or HPM_PYTHON.
PY="${HPM_PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; else PY=python3; fi
fi
# Only whether jax and hpm_jax are there (importing them here would double the check's time);
# a missing extra is the check's own one-line error (hpm_jax.cli.train).
HAS='import importlib.util as u, sys; sys.exit(not all(map(u.find_spec, ("jax", "hpm_jax"))))'
if ! (cd "$ROOT" && "$PY" -c "$HAS") >/dev/null 2>&1; then
  echo "tpu.sh: error: $PY lacks jax or hpm_jax, which check the config before the TPU is" \
    "created: run '. launch/_env.sh' (or pip install -e '.[train]'), or set HPM_PYTHON." >&2
  exit 2
fi
(cd "$ROOT" && "$PY" -m "hpm_jax.cli.$PROGRAM" --check_config --config="$CONFIG" \
  --config.dataset.data_dir="/mnt/$BUCKET/$DATA_DIR" ${EXTRA[@]+"${EXTRA[@]}"}) || exit 2

MOUNT="/mnt/$BUCKET"
GCLOUD=(gcloud compute tpus tpu-vm)
WHERE=(--zone="$ZONE")
[ -n "$PROJECT" ] && WHERE+=(--project="$PROJECT")

run() {  # print, and run unless --dry-run
  printf '+'; printf ' %q' "$@"; printf '\n'
  [ "$DRY_RUN" = 1 ] || "$@"
}
on_all_workers() {
  run "${GCLOUD[@]}" ssh "$TPU" "${WHERE[@]}" --worker=all --command="$1"
}

# 1. The TPU VM (or pod slice: one VM per host).
CREATE=("${GCLOUD[@]}" create "$TPU" "${WHERE[@]}" --accelerator-type="$ACCELERATOR" --version="$VERSION")
[ "$SPOT" = 1 ] && CREATE+=(--spot)
run "${CREATE[@]}"
cleanup() {
  if [ "$KEEP" = 1 ]; then
    echo "tpu.sh: leaving $TPU up (--keep); delete it with: ${GCLOUD[*]} delete $TPU ${WHERE[*]} --quiet"
  else
    run "${GCLOUD[@]}" delete "$TPU" "${WHERE[@]}" --quiet
  fi
}
trap cleanup EXIT

# 2. This checkout (committed files) on every worker.
ARCHIVE="$([ "$DRY_RUN" = 1 ] && echo /tmp || mktemp -d)/hpm-jax.tar.gz"  # --dry-run: makes nothing
run git -C "$ROOT" archive --format=tar.gz -o "$ARCHIVE" HEAD
run "${GCLOUD[@]}" scp "$ARCHIVE" "$TPU":/tmp/hpm-jax.tar.gz "${WHERE[@]}" --worker=all

# 3. Install: hpm-jax with JAX for TPUs in a venv; gcsfuse mounts the bucket.
on_all_workers "set -e
mkdir -p ~/hpm-jax && tar -xzf /tmp/hpm-jax.tar.gz -C ~/hpm-jax
python3 -m venv ~/hpm-venv
~/hpm-venv/bin/pip install -q --upgrade pip
~/hpm-venv/bin/pip install -q -e ~/hpm-jax'[all,tpu]'
if ! command -v gcsfuse >/dev/null; then
  echo \"deb https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -c -s) main\" |
    sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null
  curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg |
    sudo gpg --dearmor -o /etc/apt/trusted.gpg.d/gcsfuse.gpg
  sudo apt-get update -qq && sudo apt-get install -y -qq gcsfuse
fi
sudo mkdir -p $MOUNT && sudo chown \$USER $MOUNT
mountpoint -q $MOUNT || gcsfuse --implicit-dirs --rename-dir-limit=100000 $BUCKET $MOUNT"

# 4. Train (evaluate, study) on every worker; jax.distributed finds the other hosts by itself
# (--multihost).
printf -v EXTRA_ARGS ' %q' "${EXTRA[@]}"
[ "${#EXTRA[@]}" -eq 0 ] && EXTRA_ARGS=""
[ -n "$CHECKPOINT" ] && EXTRA_ARGS=" --checkpoint=$MOUNT/$CHECKPOINT$EXTRA_ARGS"
on_all_workers "cd ~/hpm-jax && ~/hpm-venv/bin/python -m hpm_jax.$PROGRAM --multihost \
--config=$CONFIG --workdir=$MOUNT/$WORKDIR --config.dataset.data_dir=$MOUNT/$DATA_DIR$EXTRA_ARGS"
