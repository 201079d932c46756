"""Read the corpus built by ``scripts/build_corpus.py`` (and tracked by DVC as ``data/``).

Layout: ``<data_dir>/<family>.tar`` (family in melody, drums, trio, groove; uncompressed tars of
``<source>/<collection>/<piece-id>.mid``) and ``<data_dir>/manifest.csv`` with the columns
``family,member,source,collection,piece,split,licence``.

The manifest, not the tar, is the source of truth: it carries the train/held-out split (decided per piece,
never per window, so held-out tunes, MMA library files and songs are wholly unseen) and the licence of
each file. Readers therefore iterate in manifest order and look members up in the tar.
"""

from __future__ import annotations

import csv
import tarfile
from collections.abc import Iterator
from pathlib import Path

FAMILIES: tuple[str, ...] = ("melody", "drums", "trio", "groove")
SPLITS: tuple[str, ...] = ("train", "heldout")
MANIFEST_COLUMNS: tuple[str, ...] = ("family", "member", "source", "collection", "piece", "split", "licence")


def read_manifest(data_dir: Path) -> list[dict[str, str]]:
    """Return the manifest rows as dicts, in file order (sorted by family, then member name).

    Raises ``FileNotFoundError`` when the corpus has not been built or pulled (``dvc pull``), and
    ``ValueError`` when the header is not the expected one, so a stale layout fails loudly.
    """
    path = Path(data_dir) / "manifest.csv"
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if tuple(reader.fieldnames or ()) != MANIFEST_COLUMNS:
            raise ValueError(f"{path}: unexpected header {reader.fieldnames}, want {MANIFEST_COLUMNS}")
        return list(reader)


def iter_corpus(data_dir: Path, family: str, split: str | None = None) -> Iterator[tuple[str, bytes]]:
    """Yield ``(member name, MIDI bytes)`` for one family, optionally one split, in manifest order.

    Manifest order is deterministic, so two runs see the same sequence; callers shuffle with their own
    seed. The tar is opened once and members are read lazily, so memory stays small.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS} or None")
    rows = [r for r in read_manifest(data_dir) if r["family"] == family and (split is None or r["split"] == split)]
    if not rows:
        return
    with tarfile.open(Path(data_dir) / f"{family}.tar", mode="r:") as tar:
        for row in rows:
            fh = tar.extractfile(row["member"])
            if fh is None:  # a directory or link: never written by the builder
                raise KeyError(f"{family}.tar: {row['member']} is not a regular file")
            yield row["member"], fh.read()
