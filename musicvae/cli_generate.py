"""`music_vae_generate`: Magenta's generation command (flags as in music_vae_generate.py, plus ours).

Argument parsing only; the work is `musicvae.generate.generate`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from musicvae.generate import DEFAULT_TEMPERATURE, GenerateOptions

DESCRIPTION = """\
Sample from a trained MusicVAE/GrooVAE, or interpolate between two MIDI files (Magenta's
music_vae_generate). Outputs are <output_dir>/<config>_<mode>_<YYYY-MM-DD_HHMMSS>-NNN-of-NNN.mid.

Interpolation inputs must each give exactly one window of the config (e.g. 2 bars of monophonic
melody for cat-mel_2bar_small). An input with several is split: every window is written as
<config>_input<1|2>-extractions_<date>-NNN-of-NNN.mid, and the run stops so that you can pick one.
"""

EPILOG = """\
examples:
  music_vae_generate --config=cat-mel_2bar_small --checkpoint_file=cat-mel_2bar_small.tar \\
      --mode=sample --num_outputs=5 --output_dir=/tmp/music_vae/generated
  music_vae_generate --config=cat-mel_2bar_small --run_dir=runs/mel2 --mode=interpolate \\
      --num_outputs=5 --input_midi_1=a.mid --input_midi_2=b.mid --output_dir=/tmp/music_vae/generated
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="music_vae_generate", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", required=True, help="config name from CONFIG_MAP (`musicvae configs` lists them)")
    p.add_argument("--checkpoint_file", help="checkpoint to load: ours (ckpt-N.pt) or Magenta's (a .tar bundle, a "
                   "model.ckpt-N prefix or a directory)")
    p.add_argument("--run_dir", help="training run directory: loads the latest checkpoint in <run_dir>/train; "
                   "takes priority over --checkpoint_file")
    p.add_argument("--mode", choices=("sample", "interpolate"), default="sample",
                   help="sample from the prior, or interpolate between --input_midi_1 and --input_midi_2 (default: sample)")
    p.add_argument("--num_outputs", type=int, default=5,
                   help="number of outputs; in interpolate mode the number of points including both ends (default: 5)")
    p.add_argument("--max_batch_size", type=int, default=8, help="largest batch decoded at once (default: 8)")
    p.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE,
                   help="sampling temperature; it divides the decoder's logits (default: 0.5)")
    p.add_argument("--input_midi_1", help="first MIDI file to interpolate from (interpolate mode)")
    p.add_argument("--input_midi_2", help="second MIDI file to interpolate to (interpolate mode)")
    p.add_argument("--output_dir", default=GenerateOptions.output_dir,
                   help=f"where outputs are written, created if missing (default: {GenerateOptions.output_dir})")
    p.add_argument("--seed", type=int, default=None, help="seed for z and the decoder's sampling (default: random)")
    p.add_argument("--plot", action="store_true", help="also write a piano-roll PNG beside each MIDI file")
    p.add_argument("--hparams", default="", help="Magenta checkpoints only: hparam overrides k=v,... applied to the "
                   "config (layer sizes are read from the checkpoint)")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, ... (default: cpu)")
    p.add_argument("--attribute", help="shift z along this attribute vector (note_density, c_diatonic, average_interval, "
                   "syncopation_16th, syncopation_8th), as stored by `musicvae attributes compute`")
    p.add_argument("--attribute_strength", type=float, default=1.0,
                   help="multiple of the attribute vector added to z; negative values give less of it (default: 1.0)")
    p.add_argument("--constraint", help="latent constraint from `musicvae constraints train`: z is mapped by its actor "
                   "before decoding")
    p.add_argument("--constraint_target", choices=("low", "high"), default="high",
                   help="attribute level the constraint aims for (default: high)")
    p.add_argument("--log", default="INFO", help="logging level: DEBUG, INFO, WARNING, ERROR (default: INFO)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log).upper(), logging.INFO), format="%(levelname)s %(name)s: %(message)s")
    if not (args.checkpoint_file or args.run_dir):
        parser.error("give --checkpoint_file or --run_dir")
    from musicvae.configs import get_config
    from musicvae.generate import ExtractionError, generate
    from musicvae.magenta_checkpoint import CheckpointError
    from musicvae.train import TrainingError

    try:
        get_config(args.config)
    except KeyError as e:
        parser.error(e.args[0])
    opts = GenerateOptions(
        config=args.config,
        checkpoint_file=args.checkpoint_file,
        run_dir=args.run_dir,
        mode=args.mode,
        num_outputs=args.num_outputs,
        max_batch_size=args.max_batch_size,
        temperature=args.temperature,
        input_midi_1=args.input_midi_1,
        input_midi_2=args.input_midi_2,
        output_dir=args.output_dir,
        seed=args.seed,
        plot=args.plot,
        hparams=args.hparams or None,
        device=args.device,
        attribute=args.attribute,
        attribute_strength=args.attribute_strength,
        constraint=args.constraint,
        constraint_target=args.constraint_target,
    )
    try:
        generate(opts)
    except ExtractionError as e:  # Magenta's messages, on stdout as Magenta prints them
        print(e)
        return 1
    except (CheckpointError, TrainingError, FileNotFoundError, ValueError) as e:
        print(f"music_vae_generate: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
