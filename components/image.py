"""The container image every component runs in on a cluster: the repository's `Dockerfile` (the project and
its pinned stack, installed by `scripts/bootstrap.sh`).

Build and push it under this name before submitting (`docker build -t <IMAGE> .`), or set MUSICVAE_IMAGE
when compiling to use another registry or tag; it is read when the components are imported. Local runs
(`musicvae pipeline run --local`) ignore it: they run in the current virtual environment.
"""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version

REPOSITORY = "ghcr.io/musicvae-mlops/musicvae"
try:
    TAG = version("musicvae")  # the image is tagged with the project version (pyproject.toml)
except PackageNotFoundError:  # a source tree that was never installed
    TAG = "latest"
IMAGE = os.environ.get("MUSICVAE_IMAGE", f"{REPOSITORY}:{TAG}")
