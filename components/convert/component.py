"""convert: one split of the validated corpus -> checksummed tensor shards for one config (`musicvae convert`)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def convert(corpus: Input[Dataset], config: str, split: str, shards: Output[Dataset]) -> int:
    """Convert the `split` files of the corpus for `config`; return the number of windows."""
    import json
    from pathlib import Path

    from musicvae.cli import main as musicvae_main

    argv = ["convert", "--config", config, "--data_dir", corpus.path, "--split", split, "--output_dir", shards.path]
    if musicvae_main(argv) != 0:
        raise RuntimeError(f"musicvae {' '.join(argv)} failed (see the log above)")
    index = json.loads((Path(shards.path) / "index.json").read_text())
    shards.metadata.update(config=config, split=split, windows=index["num_windows"], files=index["files"],
                           fingerprint=index["fingerprint"])
    return int(index["num_windows"])
