"""Sampling speed: latency and throughput of `TrainedModel` sampling, CPU and CUDA (issue 5, item 6).

    python benchmarks/sample.py                                   # CPU: 2-bar, 16-bar, trio; batch 1 and 64
    python benchmarks/sample.py --config cat-mel_2bar_small --threads 1 2 --path fast reference
    python benchmarks/sample.py --device cuda --batch 1 64 512 --path fast eager reference

Each row builds the config's model with its preset hparams (untrained weights: the cost of sampling
does not depend on them) in a `TrainedModel` whose `max_batch_size` is the row's batch, and times,
after one untimed call (which also lays the weights out and, on CUDA, captures the graph):

  decode   (CUDA only) `model.decode` of one batch of z already on the device, to one-hot samples on the
           device (through `TrainedModel._decode_batch`: the CUDA graph replay), synchronised;
  sample   what `TrainedModel.sample(batch, temperature=0.5, seed=…)` does up to the output tensors:
           z ~ N(0, I) drawn on the host, `decode_to_tensors` (padding, host→device, decode,
           device→host, numpy) — the end-to-end figure compared with Magenta;
  MIDI     the converter's `from_tensors` on those samples (NoteSequence → PrettyMIDI objects, no
           file writing): `sample` + `MIDI` is `TrainedModel.sample` as a caller sees it.

Columns: milliseconds per call (median, and the best call), samples/s from the median, the process
CPU time per call (with 1 thread: the work, whatever else runs on the machine), the 1-minute load
average, and for cat-mel_2bar_small on CPU the ratio to Magenta's TensorFlow sampler on the same 2 cores
(9 ms for 1 sample, 110 ms for 64, issue 5) as Magenta ms ÷ our `sample` median.

Paths (--path): fast = the library's default (`musicvae.nn.sampler`; CUDA graphs on CUDA); eager = the
same sampler without CUDA graphs (CUDA only); reference = the generic step loop every decoder used
before (`sampler.fast_sampling(False)`, no graphs). Threads (--threads) are set per row with
torch.set_num_threads; OMP_WAIT_POLICY=PASSIVE unless set (a busy-waiting OpenMP runtime collapses on a
shared machine, see benchmarks/train.py). Each row runs for --seconds (at least --min-calls calls).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

if __name__ == "__main__":  # must precede the OpenMP runtime's start, i.e. importing torch
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from musicvae.configs import get_config  # noqa: E402
from musicvae.generate import TrainedModel  # noqa: E402
try:
    from musicvae.nn import sampler  # noqa: E402
except ImportError:  # a checkout from before the fast sampler: its default path is the step loop
    sampler = None

CONFIGS = ["cat-mel_2bar_small", "hierdec-mel_16bar", "hierdec-trio_16bar"]
TEMPERATURE = 0.5
# Magenta's TensorFlow sampler, cat-mel_2bar_small on the same 2 cores (issue 5): ms per call by batch.
MAGENTA_MS = {("cat-mel_2bar_small", 1): 9.0, ("cat-mel_2bar_small", 64): 110.0}


def time_calls(fn, seconds: float, min_calls: int, device: torch.device) -> dict[str, float]:
    """Call fn until `seconds` have passed (at least `min_calls` times): median and best wall ms, median CPU ms."""
    walls, cpus = [], []
    start = time.perf_counter()
    while len(walls) < min_calls or time.perf_counter() - start < seconds:
        t, c = time.perf_counter(), time.process_time()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    return {"ms": 1e3 * statistics.median(walls), "best_ms": 1e3 * min(walls),
            "cpu_ms": 1e3 * statistics.median(cpus), "calls": len(walls)}


def run_row(args, name: str, batch: int, threads: int, path: str, device: torch.device) -> dict:
    config = get_config(name)
    torch.manual_seed(0)
    model = TrainedModel(config, config.build_model(), max_batch_size=batch, device=device)
    model.cuda_graphs = path == "fast"
    decode_batch = getattr(model, "_decode_batch", lambda z, n, t, c: model.model.decode(z, n, t, c).samples)
    length, z_size = config.hparams.max_seq_len, config.hparams.z_size
    z_device = torch.randn(batch, z_size, device=device)
    seed = iter(range(1, 1 << 30))

    def decode() -> None:
        with torch.inference_mode():
            decode_batch(z_device, length, TEMPERATURE, None)

    def sample() -> np.ndarray:  # TrainedModel.sample up to the tensors
        with model._rng(next(seed)):
            z = torch.randn(batch, z_size).numpy()
            return model.decode_to_tensors(z, length, TEMPERATURE)

    load_before = os.getloadavg()[0]
    with contextlib.ExitStack() as stack:
        if path == "reference" and sampler is not None:
            stack.enter_context(sampler.fast_sampling(False))
        samples = sample()  # untimed: weight layout, CUDA graph capture, allocator warm-up
        timed_decode = time_calls(decode, args.seconds, args.min_calls, device) if device.type == "cuda" else None
        timed_sample = time_calls(sample, args.seconds, args.min_calls, device)
    midi = time_calls(lambda: model.converter.from_tensors(list(samples)), min(args.seconds, 1.0), 1, torch.device("cpu"))
    magenta = MAGENTA_MS.get((name, batch)) if device.type == "cpu" else None
    row = {
        "config": name, "batch": batch, "device": _device_name(device), "threads": threads, "path": path,
        "decode_ms": timed_decode and timed_decode["ms"], "decode_best_ms": timed_decode and timed_decode["best_ms"],
        "sample_ms": timed_sample["ms"], "sample_best_ms": timed_sample["best_ms"],
        "sample_cpu_ms": timed_sample["cpu_ms"], "samples_per_s": batch / timed_sample["ms"] * 1e3,
        "midi_ms": midi["ms"], "calls": timed_sample["calls"], "magenta_ms": magenta,
        "vs_magenta": magenta / timed_sample["ms"] if magenta else None,
        "load": (load_before + os.getloadavg()[0]) / 2,
    }
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu:{platform.processor() or platform.machine()}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--config", nargs="+", default=CONFIGS, help=f"configs (default: {' '.join(CONFIGS)})")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 64], help="batch sizes (default: 1 64)")
    p.add_argument("--threads", type=int, nargs="+", default=None,
                   help="CPU threads per row (default: 2, the machine Magenta's figures come from; torch's on CUDA)")
    p.add_argument("--path", nargs="+", choices=["fast", "eager", "reference"], default=["fast"],
                   help="fast: the default (sampler + CUDA graphs); eager: no CUDA graphs; reference: the "
                   "generic step loop (default: fast)")
    p.add_argument("--seconds", type=float, default=3.0, help="timed seconds per row and figure (default: 3)")
    p.add_argument("--min-calls", type=int, default=1, help="timed calls at least (default: 1)")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    threads_list = args.threads or ([2] if device.type == "cpu" else [torch.get_num_threads()])
    paths = [q for q in args.path if q != "eager" or device.type == "cuda"]
    print(f"# {time.strftime('%Y-%m-%d %H:%M')}  torch {torch.__version__}  {_device_name(device)}  "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}  cores={os.cpu_count()}  temperature={TEMPERATURE}",
          flush=True)
    header = (f"{'config':<20} {'batch':>5} {'thr':>3} {'path':<9} {'decode ms':>10} {'sample ms':>10} {'best':>9} "
              f"{'samples/s':>10} {'cpu ms':>9} {'MIDI ms':>8} {'vs Magenta':>10} {'load':>5}")
    print(header, flush=True)
    rows = []
    for name in args.config:
        for batch in args.batch:
            for threads in threads_list:
                torch.set_num_threads(threads)
                for path in paths:
                    row = run_row(args, name, batch, threads, path, device)
                    rows.append(row)
                    vs = f"{row['vs_magenta']:.1f}x" if row["vs_magenta"] else "n/a"
                    decode = f"{row['decode_ms']:.2f}" if row["decode_ms"] is not None else "n/a"
                    print(f"{name:<20} {batch:>5} {threads:>3} {path:<9} {decode:>10} {row['sample_ms']:>10.2f} "
                          f"{row['sample_best_ms']:>9.2f} {row['samples_per_s']:>10.1f} {row['sample_cpu_ms']:>9.2f} "
                          f"{row['midi_ms']:>8.2f} {vs:>10} {row['load']:>5.2f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
