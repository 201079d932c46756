"""Every rendered document validates strictly (no unknown fields, no unknown kinds) against the
Kubernetes OpenAPI schemas bundled in kubernetes-validate: offline, for the oldest and newest version."""

from __future__ import annotations

import pytest

from tests.k8s.manifests import K8S_VERSIONS, TARGETS, schema_problems


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("target", TARGETS)
def test_every_document_validates_strictly(rendered, target, version):
    docs = rendered[target]
    assert len(docs) >= 13
    assert schema_problems(docs, version) == []
