#!/usr/bin/env bash
# The main job, on one machine (2 CPU cores are enough, about 6 minutes with the install on a quiet machine):
# renders the synthetic growth-stage dataset into TFDS array_record shards, trains a small CLIP
# from scratch (a plain CPU-sized conv image tower at 96 px, class-aware L_image + L_text on
# per-image scene captions; configs/fungalzsl.py says why), evaluates zero-shot accuracy and
# Recall@K on the held-out test split and zero-shot on shifted renders (paper preset, grayscale,
# other magnifications and sizes), and writes $WORKDIR/summary.json and confusion_matrix.png.
#   ./launch/local.sh                         default run (resumes if $WORKDIR holds one)
#   ./launch/local.sh --config.total_steps=300  extra flags go to fungizsl.main
#   ./launch/local.sh fungiclef [flags]          the FungiCLEF 2025 few-shot system (launch/local_fungiclef.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "fungiclef" ]]; then
  shift
  exec launch/local_fungiclef.sh "$@"
fi
FUNGIZSL_SETUP=${FUNGIZSL_SETUP:-main}
source launch/setup_env.sh  # .venv with the package only: the main job needs no test stack

WORKDIR=${WORKDIR:-workdir/fungalzsl-local}
TFDS_DIR=${TFDS_DIR:-workdir/tfds}
SIZE=${SIZE:-96}  # configs/fungalzsl.py RUNLOCAL_CPU_SIZE
DATASET=local_randomised_${SIZE}

# The randomised renders (magnification 0.3-3.2, fields of small colonies, flat colour on white;
# fungizsl/data/synthetic.py RANDOMISED), three times the paper's 1,600 training images per class:
# rendering is cheap next to training, and fresh scenes beat repeated ones (docs/training.md).
echo "== 1/2 rendering the synthetic growth stages (4,800 / 200 / 200 images per class, ${SIZE} px, randomised)"
fungizsl build fungal_growth_stages --config realistic_224_randomised --train-per-class 4800 --size "$SIZE" \
  --name "$DATASET" --data-dir "$TFDS_DIR" --workers 2

echo "== 2/2 training and evaluating a small CLIP from scratch (workdir: $WORKDIR)"
python -m fungizsl.main --config="configs/fungalzsl.py:arch=cnn_tiny,runlocal" --workdir="$WORKDIR" \
  --config.data.kind=tfds --config.data.tfds_dir="$TFDS_DIR" --config.data.tfds_config="$DATASET" \
  --config.data.image_size="$SIZE" "$@"

cat <<MSG

Wrote $WORKDIR/summary.json and $WORKDIR/confusion_matrix.png (TensorBoard: $WORKDIR/tb).
Next steps:
  * evaluate the trained model on your own class folders:
      python -m fungizsl.main --config=configs/evaluate.py:model=$WORKDIR,images=DIR --workdir=runs/eval
  * full-size configs (on accelerators): python -m fungizsl.main --workdir=DIR \\
      --config=configs/fungalzsl.py:arch=b32    (also b16, l14, l14_336; see docs/training.md)
  * start from a downloaded CLIP folder (config.json + model.safetensors + tokenizer files):
      python -m fungizsl.main --workdir=DIR --config=configs/fungalzsl.py:arch=b32,init=/path/to/clip-vit-base-patch32
  * several hosts: launch/tpu_vm.sh or launch/gpu_slurm.sbatch (docs/clusters.md: "Run on a TPU VM slice",
    "Run on a SLURM cluster").
MSG
