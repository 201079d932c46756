# The image every Kubeflow component runs in (components/image.py names it): the project and its pinned
# stack, installed exactly as on a developer machine, by scripts/bootstrap.sh, into /opt/musicvae/.venv.
#
#   docker build -t ghcr.io/musicvae-mlops/musicvae:0.1.0 .      # the tag is the project version
#   docker push ghcr.io/musicvae-mlops/musicvae:0.1.0
#
# Inside the image `torch==2.13.0` resolves to PyPI's Linux wheel, which is the CUDA build: the train task runs
# on the node's GPU (nvidia.com/gpu, see pipelines/settings.py). The KFP executor comes from requirements.lock
# (kfp==2.17.3), so the components need no pip install at start-up (install_kfp_package=False).
FROM python:3.11-slim

# gcc builds the MIDI reader's C extension (musicvae/data/_smf.c) during `pip install -e .`. The image holds no
# .git: the commit in a packaged model's lineage is the pipeline's git_commit parameter, set when submitting.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/musicvae
# The pinned stack first, so that a code change does not reinstall torch and friends.
COPY requirements.lock pyproject.toml setup.py README.md ./
COPY scripts/bootstrap.sh scripts/bootstrap.sh
RUN python -m venv .venv \
    && .venv/bin/pip install -q --disable-pip-version-check --no-cache-dir torch==2.13.0 \
    && .venv/bin/pip install -q --disable-pip-version-check --no-cache-dir -r requirements.lock
COPY . .
RUN bash scripts/bootstrap.sh && .venv/bin/musicvae configs > /dev/null

# `python3` of the component command is the project's interpreter. The model store (BENTOML_HOME) is where the
# pipeline mounts the PVC musicvae-model-store into the gate and package tasks (pipelines/settings.py), so
# packaged models outlive the pod and the gate finds the champion.
ENV PATH=/opt/musicvae/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    BENTOML_HOME=/mnt/bentoml \
    BENTOML_DO_NOT_TRACK=true \
    DVC_NO_ANALYTICS=1
