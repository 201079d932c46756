"""The pipelines' settings in one place, importable without kfp (the CLI's --help reads them).

The embedded default run (what `musicvae pipeline run --local` trains when not told otherwise) and where the
train task runs on a cluster.
"""

from typing import Any

# One small config for a few hundred CPU steps: the quick start (scripts/quickstart.sh).
QUICK_CONFIG = "cat-mel_2bar_small"
QUICK_HPARAMS = "batch_size=64,enc_rnn_size=[256],dec_rnn_size=[128,128],z_size=64"
QUICK_STEPS = 300
DEFAULT_RUNS: list[dict[str, Any]] = [{"config": QUICK_CONFIG, "hparams": QUICK_HPARAMS, "num_steps": QUICK_STEPS}]

# The train task on a cluster: one NVIDIA GPU, the GPU nodes' taint tolerated, pinned to them by a label.
GPU_RESOURCE = "nvidia.com/gpu"
GPU_NODE_SELECTOR = ("nvidia.com/gpu.present", "true")  # the label NVIDIA's GPU feature discovery sets
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
TRAIN_CPU_REQUEST, TRAIN_MEMORY_REQUEST = "4", "16G"
TRAIN_RETRIES = 2
# A volume that outlives the train pods: checkpoints go there, so a retried attempt resumes.
CHECKPOINT_PVC = "musicvae-checkpoints"
CHECKPOINT_MOUNT = "/mnt/checkpoints"
