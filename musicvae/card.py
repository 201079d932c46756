"""Release a trained checkpoint: half-precision weights and a model card with held-out metrics (issue 3, item 5).

    musicvae card --checkpoint_file runs/mel/train --examples_path data/shards/melody-heldout \\
        --output_dir models/cat-mel_2bar_small

writes into the output directory:

* `<name>.pt`: the weights in half precision with the config and step, our checkpoint format without the
  optimiser state (a quarter of a training checkpoint's size). `TrainedModel.from_checkpoint`,
  `music_vae_generate --checkpoint_file` and `musicvae serve --checkpoint_file` load it as they load any of ours.
* `metrics.json`: Magenta's eval metrics on the held-out examples twice: teacher-forced (every decoder input
  the true previous token) and with full sampling (every input the model's own sample at temperature 1.0),
  as the paper's Table 1 reports them.
* `README.md`: the card: config, size, training step, both sets of metrics beside the paper's figures
  (spec §6, recalled there, not checked against the PDF) where the paper has a comparable model.

The metrics are computed from the released (half-precision) weights, so they describe what users get.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from musicvae.configs import Config
from musicvae.convert import config_family
from musicvae.train import (
    CHECKPOINT_FORMAT,
    TRAIN_DIR,
    CheckpointError,
    TrainingError,
    TrainOptions,
    config_from_dict,
    evaluate_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)

log = logging.getLogger(__name__)

# Scheduled-sampling settings for the two passes: a constant schedule samples each decoder input with probability
# sampling_rate (musicvae.nn.decoders.sampling_probability).
PASSES = {
    "teacher_forced": "sampling_schedule=constant,sampling_rate=0.0",
    "sampled": "sampling_schedule=constant,sampling_rate=1.0",
}
# The paper's Table 1 (spec §6): (family, bars, hierarchical decoder) -> {stream: (teacher-forced, sampled)}.
PAPER_ACCURACY: dict[tuple[str, int, bool], dict[str, tuple[float, float]]] = {
    ("melody", 2, False): {"melody": (0.986, 0.951)},
    ("drums", 2, False): {"drums": (0.979, 0.917)},
    ("melody", 16, False): {"melody": (0.883, 0.620)},
    ("melody", 16, True): {"melody": (0.919, 0.812)},
    ("trio", 16, False): {"melody": (0.796, 0.574), "bass": (0.829, 0.536), "drums": (0.903, 0.719)},
    ("trio", 16, True): {"melody": (0.848, 0.741), "bass": (0.880, 0.734), "drums": (0.912, 0.755)},
}
CARD_METRICS = ("accuracy", "mean_per_class_accuracy", "r_loss", "kl_bits", "loss")


def paper_figures(config: Config) -> dict[str, tuple[float, float]]:
    """The paper's accuracies for this kind of model, {} where it has none (NADE and GrooVAE among them)."""
    if config.model.decoder not in ("categorical", "multi_out_categorical", "hierarchical"):
        return {}
    bars = config.hparams.max_seq_len // 16
    return PAPER_ACCURACY.get((config_family(config.name), bars, config.model.decoder == "hierarchical"), {})


def release_weights(payload: dict[str, Any], output: Path) -> dict[str, Any]:
    """Write a loaded checkpoint's weights in half precision (config and step kept, optimiser state dropped)."""
    model = {k: v.half() if v.is_floating_point() else v for k, v in payload["model"].items()}
    release = {"format": CHECKPOINT_FORMAT, "step": payload["step"], "config": payload["config"], "model": model}
    output.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(release, output)
    return release


def write_card(
    checkpoint: str | Path,
    examples_path: list[str],
    output_dir: str | Path,
    name: str | None = None,
    eval_num_batches: int | None = None,
    device: str = "auto",
    num_workers: int = 2,
) -> Path:
    """Release `checkpoint` (a file or a run dir) into `output_dir`; returns the card's path."""
    source = Path(checkpoint)
    path = (latest_checkpoint(source / TRAIN_DIR) or latest_checkpoint(source)) if source.is_dir() else source
    if path is None or not path.is_file():
        raise CheckpointError(f"no checkpoint at {checkpoint}")
    payload = load_checkpoint(path)
    config = config_from_dict(payload["config"])
    out = Path(output_dir)
    weights = out / f"{name or config.name}.pt"
    release = release_weights(payload, weights)

    metrics = {}
    with tempfile.TemporaryDirectory() as run_dir:
        opts = TrainOptions(config=config.name, run_dir=run_dir, examples_path=examples_path,
                            eval_num_batches=eval_num_batches, device=device, num_workers=num_workers)
        for label, hparams in PASSES.items():
            metrics[label] = evaluate_checkpoint(weights, dataclasses.replace(opts, hparams=hparams))
            metrics[label]["checkpoint"] = weights.name
    params = sum(v.numel() for v in release["model"].values())
    doc = {"config": config.name, "step": int(release["step"]), "parameters": params, "source_checkpoint": str(path),
           "weights": weights.name, "weights_bytes": weights.stat().st_size, "heldout": metrics,
           "paper_accuracy": {k: {"teacher_forced": tf, "sampled": s} for k, (tf, s) in paper_figures(config).items()}}
    (out / "metrics.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    card = out / "README.md"
    card.write_text(render_card(config, doc))
    log.info("released %s (%d parameters, %.1f MB) with its card %s", weights, params, doc["weights_bytes"] / 2**20, card)
    return card


def render_card(config: Config, doc: dict[str, Any]) -> str:
    tf, sampled = doc["heldout"]["teacher_forced"], doc["heldout"]["sampled"]
    hp = config.hparams
    lines = [
        f"# {config.name}: {doc['weights']}",
        "",
        f"MusicVAE `{config.name}` ({config.model.encoder} encoder, {config.model.decoder} decoder), trained to step "
        f"{doc['step']}. Encoder {list(hp.enc_rnn_size)}, decoder {list(hp.dec_rnn_size)}, z {hp.z_size}, "
        f"free bits {hp.free_bits}, β {hp.max_beta}; {doc['parameters'] / 1e6:.2f} M parameters, "
        f"{doc['weights_bytes'] / 2**20:.1f} MB in half precision.",
        "",
        "```bash",
        f"music_vae_generate --config={config.name} --checkpoint_file={doc['weights']} --mode=sample "
        "--num_outputs=5 --output_dir=/tmp/out",
        "```",
        "",
        f"## Held-out metrics ({tf['num_examples']} examples)",
        "",
        "Magenta's eval metrics of these weights: teacher-forced, and with full sampling (each decoder input the "
        "model's own sample, temperature 1.0), as in the paper's Table 1.",
        "",
        "| metric | teacher-forced | full sampling |",
        "|---|---:|---:|",
    ]
    names = [m for m in CARD_METRICS if m in tf] + sorted(k for k in tf if "accuracy" in k and k not in CARD_METRICS)
    lines += [f"| {m} | {_fmt(tf[m])} | {_fmt(sampled.get(m))} |" for m in names if _fmt(tf[m])]
    paper = doc["paper_accuracy"]
    lines += ["", "## The paper (Roberts et al. 2018, Table 1; recalled in spec §6)", ""]
    if paper:
        lines += ["| stream | teacher-forced | full sampling |", "|---|---:|---:|"]
        lines += [f"| {stream} | {v['teacher_forced']:.3f} | {v['sampled']:.3f} |" for stream, v in paper.items()]
        lines += ["", "The paper trained on the Lakh MIDI Dataset (50k steps for 2-bar, 100k for 16-bar models, "
                  "batch 512); these weights come from this project's corpus (see the repository's README)."]
    else:
        lines += ["The paper reports no comparable figure for this kind of model."]
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else ""


def run_card(args: argparse.Namespace) -> int:
    try:
        card = write_card(args.checkpoint_file, args.examples_path, args.output_dir, args.name,
                          args.eval_num_batches, args.device, args.num_workers)
    except (TrainingError, FileNotFoundError, ValueError) as e:
        print(f"musicvae card: error: {e}", file=sys.stderr)
        return 2
    print(card)
    return 0


def add_card_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "card",
        help="release a checkpoint: half-precision weights, held-out metrics and a model card",
        description="Write <output_dir>/<name>.pt (half-precision weights with config and step), metrics.json "
                    "(held-out eval metrics, teacher-forced and with full sampling) and README.md (the model card, "
                    "beside the paper's Table 1 where comparable).",
    )
    parser.add_argument("--checkpoint_file", required=True, help="a checkpoint (.pt) or a run dir (its latest)")
    parser.add_argument("--examples_path", nargs="+", required=True,
                        help="held-out examples: converted shards, a MIDI directory or glob, or a corpus data dir (its heldout split), "
                             "as music_vae_train --mode=eval")
    parser.add_argument("--output_dir", required=True, help="e.g. models/cat-mel_2bar_small")
    parser.add_argument("--name", help="the weights' file name without .pt (default: the config name)")
    parser.add_argument("--eval_num_batches", type=int, help="at most this many held-out batches (default: all)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--num_workers", type=int, default=2, help="MIDI conversion workers for MIDI inputs")
    parser.set_defaults(func=run_card)
    return parser
