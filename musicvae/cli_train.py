"""`music_vae_train`: Magenta's training/eval command (flags as in music_vae_train.py, plus ours).

Argument parsing only; the loop is `musicvae.train`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence

DESCRIPTION = """\
Train a MusicVAE/GrooVAE config, or evaluate its latest checkpoint (Magenta's music_vae_train).

Training writes <run_dir>/train/ckpt-<step>.pt (weights, full config, optimiser and RNG state, data
position), metrics.jsonl/.csv per logging step (dvc plots) and metrics.json (dvc metrics). Rerunning
the same command resumes from the latest checkpoint. --mode=eval evaluates the latest checkpoint on
held-out data and writes <run_dir>/eval/metrics.json.
"""

EPILOG = """\
examples:
  music_vae_train --config=cat-mel_2bar_small --run_dir=runs/mel2 --examples_path=my_midi/
  music_vae_train --config=cat-mel_2bar_small --run_dir=runs/mel2 --mode=eval
  music_vae_train --config=hierdec-mel_16bar --run_dir=runs/h16 --examples_path=shards/mel16-train \\
      --hparams=batch_size=64,free_bits=256
  music_vae_train --config=groovae_2bar_humanize --run_dir=runs/groove --drum_map=gm   # the General MIDI corpus
  music_vae_train --config=groovae_2bar_tap_fixed_velocity_note_dropout --run_dir=runs/tapdrop --drum_map=gm \
      --nocache_dataset   # from MIDI, note dropout drawn again every epoch
"""


def build_parser() -> argparse.ArgumentParser:
    from musicvae.configs import add_drum_map_argument

    p = argparse.ArgumentParser(
        prog="music_vae_train",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", required=True, help="config name from CONFIG_MAP, e.g. cat-mel_2bar_small "
                   "(`musicvae configs` lists them)")
    p.add_argument("--run_dir", required=True, help="run directory: checkpoints and training metrics go to "
                   "<run_dir>/train, eval metrics to <run_dir>/eval")
    p.add_argument("--mode", choices=("train", "eval"), default="train",
                   help="train (default), or eval: evaluate the latest checkpoint in <run_dir>/train")
    p.add_argument("--examples_path", action="append", default=[],
                   help="training/eval data: `musicvae convert` output directories (checksums verified), or MIDI "
                   "files, directories (searched recursively), globs or .tar archives converted on the fly, or a "
                   "corpus directory with manifest.csv. Repeat the flag or separate with commas. "
                   "Default: the corpus in --data_dir")
    p.add_argument("--data_dir", default="data", help="corpus directory (manifest.csv + <family>.tar) used "
                   "when --examples_path is not given (default: data)")
    p.add_argument("--split", choices=("train", "heldout"), help="corpus split to read (default: train when "
                   "training, heldout when evaluating); corpus only")
    p.add_argument("--hparams", default="", help="comma-separated hparam overrides, Magenta style: "
                   "batch_size=64,dec_rnn_size=[256,256],free_bits=48. In eval mode they apply on top of the "
                   "checkpoint's, e.g. sampling_schedule=constant,sampling_rate=0 for teacher-forced accuracy")
    p.add_argument("--num_steps", type=int, default=200_000,
                   help="train until this global step (default: 200000, as Magenta)")
    p.add_argument("--eval_num_batches", type=int, default=None,
                   help="eval batches to run (default: all held-out examples, the last batch may be partial)")
    p.add_argument("--checkpoints_to_keep", type=int, default=5,
                   help="newest checkpoints kept, 0 keeps all (default: 5; Magenta keeps 100, but ours include "
                   "optimiser state, ~50 MB for cat-mel_2bar_small and ~2 GB for hierdec-mel_16bar)")
    p.add_argument("--checkpoint_every_secs", type=float, default=60.0,
                   help="seconds between checkpoints, 0 for every step; one is always written at the end "
                   "(default: 60, as Magenta)")
    p.add_argument("--log_every_steps", type=int, default=100,
                   help="steps between rows of metrics.jsonl/.csv and log lines; rows hold means over the "
                   "interval (default: 100)")
    p.add_argument("--device", default="auto", help="torch device: auto (cuda if available, else cpu), cpu, "
                   "cuda, cuda:1, ... CUDA trains with bf16 autocast and TF32; CPU in fp32")
    p.add_argument("--num_workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="worker processes converting MIDI on the fly; 0 converts in the main process "
                   "(default: min(4, cores))")
    p.add_argument("--seed", type=int, default=0, help="seed for initialisation, data order, window choice, "
                   "augmentation and sampling (default: 0)")
    p.add_argument("--cache_dataset", dest="cache_dataset", action="store_true", default=True,
                   help="convert MIDI once and reshuffle the same examples every epoch (default, as Magenta)")
    p.add_argument("--nocache_dataset", dest="cache_dataset", action="store_false",
                   help="convert MIDI again each epoch: new random windows, transpositions and GrooVAE note dropout "
                   "every epoch")
    p.add_argument("--compile", action="store_true", help="wrap the model in torch.compile for training (meant for CUDA; on CPU, torch 2.13's "
                   "inductor fails to lower the mkldnn LSTM kernels)")
    add_drum_map_argument(p)
    p.add_argument("--log", default="INFO", help="logging level: DEBUG, INFO, WARNING, ERROR (default: INFO)")
    return p


def _fail(message: str) -> int:
    print(f"music_vae_train: error: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log).upper(), logging.INFO), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from musicvae.configs import get_config
    from musicvae.convert import ShardError
    from musicvae.train import TrainingError, TrainOptions, evaluate, train

    try:  # unknown config names and malformed hparams, before any work
        get_config(args.config).with_hparams(args.hparams).with_drum_map(args.drum_map)
    except (KeyError, ValueError) as e:
        return _fail(e.args[0] if e.args else str(e))
    opts = TrainOptions(
        config=args.config,
        run_dir=args.run_dir,
        examples_path=[part for value in args.examples_path for part in value.split(",") if part],
        data_dir=args.data_dir,
        split=args.split,
        hparams=args.hparams,
        num_steps=args.num_steps,
        eval_num_batches=args.eval_num_batches,
        checkpoints_to_keep=args.checkpoints_to_keep,
        checkpoint_every_secs=args.checkpoint_every_secs,
        log_every_steps=args.log_every_steps,
        device=args.device,
        num_workers=args.num_workers,
        seed=args.seed,
        cache_dataset=args.cache_dataset,
        compile=args.compile,
        drum_map=args.drum_map,
    )
    try:
        if args.mode == "train":
            train(opts)
        else:
            evaluate(opts)
    except (TrainingError, ShardError) as e:  # bad data or run directory: the message says what to do
        return _fail(str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
