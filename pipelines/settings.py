"""Where the train task runs on a cluster, in one place and importable without kfp (the CLI's --help reads it).

What the pipeline trains by default (configs, hparams, steps, seed, family, gate) is not here: it is read from
params.yaml at compile time (`pipelines.training.read_defaults`), the file the DVC pipeline reads too.
"""

from pathlib import Path

PARAMS_FILE = Path(__file__).resolve().parents[1] / "params.yaml"

# The train task on a cluster: one NVIDIA GPU, the GPU nodes' taint tolerated, pinned to them by a label.
GPU_RESOURCE = "nvidia.com/gpu"
GPU_NODE_SELECTOR = ("nvidia.com/gpu.present", "true")  # the label NVIDIA's GPU feature discovery sets
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
TRAIN_CPU_REQUEST, TRAIN_MEMORY_REQUEST = "4", "16G"
TRAIN_RETRIES = 2
# A volume that outlives the train pods: checkpoints go there, so a retried attempt resumes.
CHECKPOINT_PVC = "musicvae-checkpoints"
CHECKPOINT_MOUNT = "/mnt/checkpoints"
# The BentoML model store shared by the gate (which reads the champion) and package (which writes) tasks: the
# image's BENTOML_HOME (Dockerfile) is this mount point.
MODEL_STORE_PVC = "musicvae-model-store"
MODEL_STORE_MOUNT = "/mnt/bentoml"
