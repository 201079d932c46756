#!/usr/bin/env bash
# The main job on the embedded default data, end to end on a laptop-class CPU:
#   install -> build a melody corpus from the music21 folk collections that ship inside the pinned
#   music21 package -> validate it (great-expectations) -> convert it to checksummed tensor shards ->
#   train a small cat-mel_2bar_small for a few hundred steps -> evaluate it on held-out tunes.
# Everything lands under $QUICKSTART_DIR (default runs/quickstart); re-running resumes/reuses.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
OUT=${QUICKSTART_DIR:-runs/quickstart}
STEPS=${QUICKSTART_STEPS:-300}
CONFIG=cat-mel_2bar_small
# A smaller model than the preset so the CPU run takes minutes; the full preset is --hparams-free.
HPARAMS=${QUICKSTART_HPARAMS:-batch_size=64,enc_rnn_size=[256],dec_rnn_size=[128,128],z_size=64}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$OUT"

echo "== 1/5 corpus: music21 folk tunes (embedded in the music21 package)"
.venv/bin/python scripts/build_corpus.py --sources music21 --out "$OUT/data" --cache-dir "$OUT/cache"

echo "== 2/5 validation"
.venv/bin/musicvae validate "$OUT/data/melody.tar" --family melody --report-dir "$OUT/validation"

echo "== 3/5 conversion to shards"
for split in train heldout; do
    .venv/bin/musicvae convert --config "$CONFIG" --data_dir "$OUT/data" --split "$split" \
        --output_dir "$OUT/shards/$split"
done

echo "== 4/5 training ($STEPS steps, $HPARAMS)"
.venv/bin/music_vae_train --config "$CONFIG" --run_dir "$OUT/run" --examples_path "$OUT/shards/train" \
    --hparams "$HPARAMS" --num_steps "$STEPS" --log_every_steps 50

echo "== 5/5 evaluation on held-out tunes"
.venv/bin/music_vae_train --config "$CONFIG" --run_dir "$OUT/run" --mode eval --examples_path "$OUT/shards/heldout"
cat "$OUT/run/eval/metrics.json"
