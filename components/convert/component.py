"""convert: one split of the validated corpus -> checksummed tensor shards for one config (`musicvae convert`)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def convert(corpus: Input[Dataset], config: str, split: str, shards: Output[Dataset]) -> int:
    """Convert the `split` files of the corpus for `config`; return the number of windows."""
    import argparse
    import json
    import logging
    from pathlib import Path

    from musicvae.convert import add_convert_parser

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # `musicvae convert`'s own parser and entry function (not the whole CLI with its plug-ins).
    parser = argparse.ArgumentParser(prog="musicvae")
    add_convert_parser(parser.add_subparsers(required=True))
    argv = ["convert", "--config", config, "--data_dir", corpus.path, "--split", split, "--output_dir", shards.path]
    args = parser.parse_args(argv)
    if args.func(args) != 0:
        raise RuntimeError(f"musicvae {' '.join(argv)} failed (see the log above)")
    index = json.loads((Path(shards.path) / "index.json").read_text())
    shards.metadata.update(config=config, split=split, windows=index["num_windows"], files=index["files"],
                           fingerprint=index["fingerprint"])
    return int(index["num_windows"])
