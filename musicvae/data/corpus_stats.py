"""How many training and held-out windows the corpus yields for each config.

Counts use each config's converter in 'eval' mode (deterministic: at most N windows per file, the
first N), which is what evaluation sees and what `musicvae convert` writes by default, and also every
distinct window without that cap: training draws a fresh random N per file each epoch, so over a run
it sees all of them. GrooVAE configs use the General-MIDI drum map (`GM_DRUM_MAP`), as training on
this corpus does.
"""

from __future__ import annotations

import json
import multiprocessing as mp
from dataclasses import asdict, dataclass
from pathlib import Path

from musicvae.configs import CONFIG_MAP, GM_DRUM_MAP
from musicvae.data.corpus import SPLITS, iter_corpus

FAMILY_OF_PREFIX = (("groovae", "groove"), ("trio", "trio"), ("drums", "drums"), ("mel", "melody"))


def config_family(name: str) -> str:
    for key, family in FAMILY_OF_PREFIX:
        if key in name:
            return family
    raise ValueError(f"no corpus family for config {name!r}")


@dataclass
class WindowCount:
    config: str
    family: str
    split: str
    files: int
    files_with_windows: int
    windows: int
    all_windows: int  # without the per-file cap
    failed: int


def _converter(name: str, capped: bool = True):
    cfg = CONFIG_MAP[name]
    overrides = GM_DRUM_MAP if config_family(name) == "groove" else {}
    conv = cfg.new_converter(**overrides)
    conv.set_mode("eval")
    if not capped:
        conv.max_tensors_per_notesequence = None
    return conv


def _count_one(args: tuple[str, bytes]) -> tuple[int, int, bool]:
    name, data = args
    try:
        capped = len(_WORKER_CONVERTERS[0].to_tensors(data).inputs)
        return capped, len(_WORKER_CONVERTERS[1].to_tensors(data).inputs), True
    except (ValueError, KeyError):  # unreadable MIDI or unmappable drums: counted as failed
        return 0, 0, False


def _init_worker(name: str) -> None:
    global _WORKER_CONVERTERS
    _WORKER_CONVERTERS = (_converter(name), _converter(name, capped=False))


def _signature(name: str) -> str:
    """Configs whose converters are configured identically yield identical windows."""
    conv = _converter(name)
    state = {k: v for k, v in vars(conv).items() if k not in ("rng", "_mode")}
    return f"{type(conv).__name__}:{sorted((k, repr(v)) for k, v in state.items())}"


def count_windows(data_dir: Path, configs: list[str] | None = None, workers: int = 2) -> list[WindowCount]:
    names = configs or sorted(n for n in CONFIG_MAP if n != "groovae_2bar_hits_control")
    done: dict[tuple[str, str], tuple[int, int, int, int, int]] = {}
    counts = []
    for name in names:
        family = config_family(name)
        signature = _signature(name)
        for split in SPLITS:
            if (signature, split) not in done:
                items = list(iter_corpus(Path(data_dir), family, split))
                with mp.get_context("fork").Pool(workers, initializer=_init_worker, initargs=(name,)) as pool:
                    results = pool.map(_count_one, [(m, d) for m, d in items], chunksize=32)
                done[(signature, split)] = (
                    len(items),
                    sum(1 for n, _, _ in results if n > 0),
                    sum(n for n, _, _ in results),
                    sum(n for _, n, _ in results),
                    sum(1 for _, _, ok in results if not ok),
                )
            counts.append(WindowCount(name, family, split, *done[(signature, split)]))
    return counts


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Count the windows the corpus yields per config and split.")
    parser.add_argument("--data_dir", default="data", help="corpus directory (manifest.csv + <family>.tar)")
    parser.add_argument("--workers", type=int, default=mp.cpu_count(), help="processes")
    parser.add_argument("--json", help="also write the counts to this JSON file")
    args = parser.parse_args()
    counts = count_windows(Path(args.data_dir), workers=args.workers)
    by_config: dict[str, dict[str, WindowCount]] = {}
    for c in counts:
        by_config.setdefault(c.config, {})[c.split] = c
    print("| config | family | train files | train windows (≤N/file) | all train windows | held-out files | held-out windows (≤N/file) | all held-out windows |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name, splits in by_config.items():
        tr, ho = splits["train"], splits["heldout"]
        print(f"| {name} | {tr.family} | {tr.files:,} | {tr.windows:,} | {tr.all_windows:,} | {ho.files:,} | {ho.windows:,} | {ho.all_windows:,} |")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(c) for c in counts], indent=1))


if __name__ == "__main__":
    main()
