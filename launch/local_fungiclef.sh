#!/usr/bin/env bash
# The FungiCLEF 2025 few-shot system (Lu et al.) on the embedded synthetic species set, on one
# machine (2 CPU cores): renders 300 species in the Kaggle layout, builds it with the same
# fungiclef2025 TFDS builder as the real download, caches token features of a small ViT trained
# on the training images (not DINOv2: no weights are downloaded), trains stage 1 (DWCL) and
# stage 2 (Q-Former with MiniLM metadata), scores the test split once, and writes
# $WORKDIR/summary.json, $WORKDIR/stage2/submission_test.csv and the ensemble's submission.
#   ./launch/local.sh fungiclef                       (resumes every step if $WORKDIR holds it)
#   ./launch/local.sh fungiclef --config.stage1.loss=supcon   extra flags go to fungizsl.main
set -euo pipefail
cd "$(dirname "$0")/.."
FUNGIZSL_SETUP=${FUNGIZSL_SETUP:-main}
source launch/setup_env.sh

WORKDIR=${WORKDIR:-workdir/fungiclef-local}
DATA=${DATA:-workdir/fungiclef-synthetic}
TFDS_DIR=${TFDS_DIR:-workdir/tfds}
SECONDS=0

echo "== 1/4 rendering the synthetic species set (300 species, 64 px) into $DATA"
fungizsl fungiclef synth --out "$DATA" --species 300 --size 64 --seed 0

echo "== 2/4 building it with the fungiclef2025 TFDS builder (as the Kaggle download)"
fungizsl build fungiclef2025 --config 300p --manual-dir "$DATA" --data-dir "$TFDS_DIR" --no-progress

echo "== 3/4 caching features (self-trained small ViT, not DINOv2) in $WORKDIR/features"
fungizsl fungiclef features --data-dir "$TFDS_DIR" --dataset-config 300p --out "$WORKDIR/features" \
  --image-size 64 --shard-size 256

echo "== 4/4 stage 1 (DWCL), stage 2 (Q-Former + metadata), evaluation (workdir: $WORKDIR)"
python -m fungizsl.main --config=configs/fungiclef.py:runlocal --workdir="$WORKDIR" \
  --config.data.features_dir="$WORKDIR/features" "$@"

echo
echo "Wrote $WORKDIR/summary.json and the Kaggle CSVs $WORKDIR/stage2/submission_test.csv," \
  "$WORKDIR/stage2/submission_test_ensemble.csv ($SECONDS s in all)."
echo "On the Kaggle download with a DINOv2 folder: see docs/fungiclef.md, \"On the Kaggle download\"."
