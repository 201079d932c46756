"""`musicvae` command line: argument parsing only; the work lives in the library modules."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from importlib.metadata import entry_points
from typing import Sequence


def _configs(args: argparse.Namespace) -> int:
    from musicvae.configs import CONFIG_MAP

    rows = []
    for name, cfg in sorted(CONFIG_MAP.items()):
        conv = cfg.data_converter
        rows.append({
            "config": name,
            "encoder": cfg.model.encoder,
            "decoder": cfg.model.decoder,
            "input_depth": conv.input_depth,
            "output_depth": conv.output_depth,
            "control_depth": conv.control_depth,
            "max_seq_len": cfg.hparams.max_seq_len,
            "z_size": cfg.hparams.z_size,
        })
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = list(rows[0])
    widths = [max(len(str(r[h])) for r in rows + [dict(zip(header, header))]) for h in header]
    for r in [dict(zip(header, header))] + rows:
        print("  ".join(str(r[h]).ljust(w) for h, w in zip(header, widths)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from musicvae.attributes import add_attributes_parser, add_constraints_parser
    from musicvae.card import add_card_parser
    from musicvae.convert import add_convert_parser
    from musicvae.gate import add_gate_parser
    from musicvae.generate import add_import_parser
    from musicvae.package import add_package_parser
    from musicvae.retrain import add_retrain_parser
    from musicvae.validate import add_validate_parser

    parser = argparse.ArgumentParser(prog="musicvae", description="MusicVAE / GrooVAE tools.")
    parser.add_argument("--log", default="INFO", help="logging level (DEBUG, INFO, WARNING, ERROR)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("configs", help="list the named configs (CONFIG_MAP) with their tensor depths")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_configs)
    add_validate_parser(sub)
    add_convert_parser(sub)
    add_import_parser(sub)
    add_attributes_parser(sub)
    add_constraints_parser(sub)
    add_gate_parser(sub)
    add_package_parser(sub)
    add_card_parser(sub)
    add_retrain_parser(sub)
    # Subcommands of the workflow parts (pipeline, serve): see [project.entry-points."musicvae.commands"].
    for entry in sorted(entry_points(group="musicvae.commands"), key=lambda e: e.name):
        entry.load()(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log).upper(), logging.INFO), format="%(levelname)s %(name)s: %(message)s")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
