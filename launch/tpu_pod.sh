#!/usr/bin/env bash
# Pretrain on a Cloud TPU VM pod slice: every worker runs the same command;
# jax.distributed detects the pod by itself. WORKDIR and DATA_DIR must be on
# storage all workers see (a gs:// bucket or a shared filesystem).
#   TPU_NAME=my-v4-32 ZONE=us-central2-b WORKDIR=gs://bucket/run1 DATA_DIR=gs://bucket/tfds \
#     launch/tpu_pod.sh [--config.global_batch_size=1024 ...]
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${WORKDIR:?set WORKDIR}" "${DATA_DIR:?set DATA_DIR}"
REPO=${REPO:-~/mlvicx_jax}
extra=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="
  cd $REPO && pip install -q -r requirements.txt 'jax[tpu]' &&
  python -m mlvicx_jax.main --config=configs/nih.py --workdir=$WORKDIR \
    --config.data_dir=$DATA_DIR --distributed $extra"
