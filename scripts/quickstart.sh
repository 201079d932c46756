#!/usr/bin/env bash
# The main job, end to end on a laptop-class CPU, with one command on a fresh clone:
#   install (scripts/bootstrap.sh) -> build the embedded default corpus: a slice of the folk tunes inside the
#   pinned music21 package -> run the Kubeflow training pipeline here with kfp.local (validate with
#   great-expectations, quarantine bad files, convert to shards, train a small cat-mel_2bar_small for a few
#   hundred steps, evaluate on held-out tunes, gate, package into the BentoML model store) -> sample MIDI
#   from the packaged model.
# Configs, steps and gate thresholds are params.yaml's. Re-running reuses every finished step (KFP cache,
# training checkpoints), also after a kill. Everything but the model store lands under $QUICKSTART_DIR.
#
# Environment: QUICKSTART_DIR (default runs/quickstart), QUICKSTART_LIMIT (tunes per music21 collection,
# default 40; 0 = all ~7,500), QUICKSTART_STEPS (override the training steps), BENTOML_HOME (model store,
# default ~/bentoml).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
bash scripts/bootstrap.sh

OUT=${QUICKSTART_DIR:-runs/quickstart}
LIMIT=${QUICKSTART_LIMIT:-40}
CONFIG=cat-mel_2bar_small
mkdir -p "$OUT/tmp"
OUT=$(cd "$OUT" && pwd)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export BENTOML_HOME=${BENTOML_HOME:-$HOME/bentoml}
export BENTOML_DO_NOT_TRACK=true
export TMPDIR="$OUT/tmp"   # kfp.local leaves one folder per task in TMPDIR; keep them with the run

echo "== 1/3 corpus: music21 folk tunes, at most $LIMIT per collection (embedded in the music21 package)"
.venv/bin/python scripts/build_corpus.py --sources music21 --limit "$LIMIT" --no-estimate \
    --out "$OUT/data" --cache-dir "$OUT/cache"

echo "== 2/3 Kubeflow pipeline, locally: validate -> convert -> train -> evaluate -> gate -> package"
.venv/bin/musicvae pipeline run --local --data_dir "$OUT/data" --pipeline_root "$OUT/pipeline" \
    --config "$CONFIG" ${QUICKSTART_STEPS:+--num_steps "$QUICKSTART_STEPS"}

checkpoint=$(.venv/bin/python - "$OUT/pipeline/summary.json" "$CONFIG" <<'PY'
import json, sys
result = json.load(open(sys.argv[1]))["configs"][sys.argv[2]]
print(result.get("checkpoint") or "")
PY
)
if [ -z "$checkpoint" ]; then
    echo "quickstart: $CONFIG did not pass the eval gate, so nothing was packaged (reasons above)." >&2
    exit 1
fi

echo "== 3/3 samples from the packaged model"
rm -rf "$OUT/samples"
.venv/bin/music_vae_generate --config "$CONFIG" --checkpoint_file "$checkpoint" --mode sample \
    --num_outputs 4 --seed 0 --output_dir "$OUT/samples"

echo
echo "quick start finished in $(( $(date +%s) - started )) s; where everything landed:"
echo "  corpus              $OUT/data"
echo "  pipeline outputs    $OUT/pipeline (summary.json lists every artifact)"
echo "  packaged model      $(.venv/bin/python -c "import json,sys; print(json.load(open(sys.argv[1]))['configs'][sys.argv[2]]['tag'])" "$OUT/pipeline/summary.json" "$CONFIG") in $BENTOML_HOME/models"
echo "  sampled MIDI        $(ls "$OUT"/samples/*.mid | head -1) (and $(( $(ls "$OUT"/samples/*.mid | wc -l) - 1 )) more)"
