"""Kubeflow pipelines built from `components/`: compiled for a cluster, run locally, submitted (`musicvae pipeline`)."""
