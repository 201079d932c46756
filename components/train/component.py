"""train: one config on its training shards (`music_vae_train`), resuming from its own checkpoint.

The run directory is `<work_dir>/<config>-<key>` when `work_dir` is set (a volume that outlives the pod on a
cluster, a folder under the pipeline root locally), the key being a hash of everything the weights depend on
(config, hparams, steps, seed, the shards' fingerprint). A retried or re-run task therefore finds the
checkpoint its previous attempt wrote and goes on from there, as `music_vae_train` does when rerun. Without
`work_dir` the run directory is the Model output itself, which a local retry sees again.

The Model output holds `train/` (the latest checkpoint, the training metrics): a run directory in the
layout `music_vae_train --mode eval` and `music_vae_generate --run_dir` read. The GPU request, tolerations
and node selector are set on the task in the pipeline (pipelines/training.py).
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train(
    shards: Input[Dataset],
    config: str,
    model: Output[Model],
    hparams: str = "",
    num_steps: int = 1000,
    seed: int = 0,
    device: str = "auto",
    work_dir: str = "",
    checkpoint_every_secs: float = 60.0,
    log_every_steps: int = 100,
) -> int:
    """Train `config` to `num_steps`; return the step of the checkpoint in the Model output."""
    import hashlib
    import json
    import shutil
    from pathlib import Path

    from musicvae.cli_train import main as train_main
    from musicvae.train import latest_checkpoint

    fingerprint = json.loads((Path(shards.path) / "index.json").read_text())["fingerprint"]
    out = Path(model.path)
    if work_dir:
        key = hashlib.sha256(json.dumps([config, hparams, num_steps, seed, fingerprint]).encode()).hexdigest()[:16]
        run_dir = Path(work_dir) / f"{config}-{key}"
    else:
        run_dir = out
    argv = [f"--config={config}", f"--run_dir={run_dir}", f"--examples_path={shards.path}", f"--hparams={hparams}",
            f"--num_steps={num_steps}", f"--seed={seed}", f"--device={device}",
            f"--checkpoint_every_secs={checkpoint_every_secs}", f"--log_every_steps={log_every_steps}"]
    if train_main(argv) != 0:
        raise RuntimeError(f"music_vae_train {' '.join(argv)} failed (see the log above)")
    checkpoint = latest_checkpoint(run_dir / "train")
    assert checkpoint is not None  # train_main returned 0, so it wrote one
    if run_dir != out:  # hand on the latest checkpoint and the training metrics, not the older checkpoints
        (out / "train").mkdir(parents=True, exist_ok=True)
        for path in [checkpoint, *(run_dir / "train").glob("metrics.*")]:
            shutil.copy2(path, out / "train" / path.name)
    step = int(checkpoint.stem.split("-")[1])
    model.metadata.update(config=config, hparams=hparams, step=step, seed=seed, shards_fingerprint=fingerprint,
                          checkpoint=f"train/{checkpoint.name}", framework="pytorch")
    return step
