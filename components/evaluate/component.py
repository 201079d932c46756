"""evaluate: held-out metrics of a trained model (`music_vae_train --mode eval`).

The Metrics output carries every number as a KFP metric (shown in the UI) and, as its file, the
`eval/metrics.json` document the gate reads.
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate(
    model: Input[Model],
    shards: Input[Dataset],
    config: str,
    metrics: Output[Metrics],
    device: str = "auto",
    seed: int = 0,
) -> float:
    """Evaluate the Model's latest checkpoint on the held-out shards; return the accuracy."""
    import json
    import math
    import tempfile
    from pathlib import Path

    from musicvae.cli_train import main as train_main

    # A run directory whose train/ is the model's: eval writes its eval/ here, never into the input artifact.
    run_dir = Path(tempfile.mkdtemp(prefix="musicvae-eval-"))
    (run_dir / "train").symlink_to(Path(model.path).resolve() / "train", target_is_directory=True)
    argv = [f"--config={config}", f"--run_dir={run_dir}", "--mode=eval", f"--examples_path={shards.path}",
            f"--device={device}", f"--seed={seed}"]
    if train_main(argv) != 0:
        raise RuntimeError(f"music_vae_train {' '.join(argv)} failed (see the log above)")
    doc = json.loads((run_dir / "eval" / "metrics.json").read_text())
    doc["checkpoint"] = model.metadata.get("checkpoint", doc["checkpoint"])  # not the temporary path
    Path(metrics.path).parent.mkdir(parents=True, exist_ok=True)
    Path(metrics.path).write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    for name, value in sorted(doc.items()):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            metrics.log_metric(name, value)
    return float(doc["accuracy"])
