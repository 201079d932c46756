"""The built corpus (data/, DVC-tracked): layout, split by piece, readable MIDI, window counts.

Skipped where the corpus has not been built or pulled (CI has no copy of it).
"""

from __future__ import annotations

import collections
from pathlib import Path

import pytest

from musicvae.configs import CONFIG_MAP
from musicvae.data.corpus import FAMILIES, iter_corpus, read_manifest
from musicvae.data.corpus_stats import config_family, count_windows
from musicvae.data.midi_io import read_midi

DATA = Path(__file__).resolve().parents[2] / "data"
pytestmark = [pytest.mark.corpus, pytest.mark.skipif(not (DATA / "manifest.csv").exists(), reason="corpus not built under data/")]


@pytest.fixture(scope="module")
def manifest():
    return read_manifest(DATA)


def test_every_family_has_both_splits(manifest):
    counts = collections.Counter((r["family"], r["split"]) for r in manifest)
    for family in FAMILIES:
        train, heldout = counts[(family, "train")], counts[(family, "heldout")]
        assert train > 1000 and heldout > 100, (family, train, heldout)
        assert 0.05 < heldout / (train + heldout) < 0.2


def test_split_is_by_piece(manifest):
    splits = collections.defaultdict(set)
    for r in manifest:
        splits[(r["source"], r["collection"], r["piece"])].add(r["split"])
    assert all(len(s) == 1 for s in splits.values())


def test_members_are_unique_and_licensed(manifest):
    assert len({(r["family"], r["member"]) for r in manifest}) == len(manifest)
    assert all(r["licence"] for r in manifest)


@pytest.mark.parametrize("family", FAMILIES)
def test_members_read_as_midi(family):
    for i, (name, data) in enumerate(iter_corpus(DATA, family, "heldout")):
        ns = read_midi(data)
        assert ns.notes, name
        if i == 50:
            break


def test_every_config_has_a_family():
    assert {config_family(n) for n in CONFIG_MAP} == set(FAMILIES)


def test_window_counts_for_a_2bar_melody_and_a_groove_config():
    counts = {(c.config, c.split): c for c in count_windows(DATA, ["cat-mel_2bar_small", "groovae_4bar"], workers=2)}
    mel = counts[("cat-mel_2bar_small", "heldout")]
    assert mel.files > 500 and mel.windows > 3 * mel.files and mel.all_windows >= mel.windows
    assert mel.windows <= 5 * mel.files  # the per-file cap
    groove = counts[("groovae_4bar", "heldout")]
    assert groove.failed == 0 and groove.windows > groove.files
