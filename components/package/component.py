"""package: a gated checkpoint into the BentoML model store, with its metrics and lineage (`musicvae.package`).

The model store is `$BENTOML_HOME/models` of the process (on a cluster, point BENTOML_HOME at a volume or
export the model from there). Lineage: the corpus's data version (the pipeline's `data_version`, else the
training shards' fingerprint), the git commit the pipeline was compiled or run from, the config and the
params that trained it, and the Model artifact it came from.
"""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def package(
    model: Input[Model],
    metrics: Input[Metrics],
    decision: Input[Artifact],
    corpus: Input[Dataset],
    config: str,
    record: Output[Artifact],
    hparams: str = "",
    num_steps: int = 0,
    seed: int = 0,
    git_commit: str = "",
    promote: bool = False,
) -> str:
    """Register the Model's checkpoint as a new version of musicvae-<config> (stage=candidate; with `promote`,
    stage=champion, the config's previous champion retired: `musicvae.package.promote`); return its tag."""
    import json
    import os
    from pathlib import Path

    from musicvae.gate import GateDecision
    from musicvae.package import Lineage, package_model
    from musicvae.package import promote as promote_model

    eval_metrics = json.loads(Path(metrics.path).read_text())
    gate_decision = GateDecision.load(decision.path)
    shards = model.metadata.get("shards_fingerprint", "unknown")
    data_version = corpus.metadata.get("data_version") or f"shards:{shards}"
    lineage = Lineage(data_version=data_version, git_commit=git_commit or "unknown", config=config,
                      params={"hparams": hparams, "num_steps": num_steps, "seed": seed}, run_dir=model.uri)
    tag = package_model(model.path, eval_metrics, lineage, gate=gate_decision)
    if promote:
        promote_model(tag)
    doc = {"config": config, "packaged": True, "tag": tag, "promoted": promote, "metrics": eval_metrics,
           "lineage": lineage.to_dict(),
           "bentoml_home": os.environ.get("BENTOML_HOME", "~/bentoml")}
    Path(record.path).parent.mkdir(parents=True, exist_ok=True)
    Path(record.path).write_text(json.dumps(doc, indent=1) + "\n")
    record.metadata.update(tag=tag, config=config, data_version=data_version, git_commit=lineage.git_commit,
                           stage="champion" if promote else "candidate")
    print(f"packaged {config} as {tag}")
    return tag
