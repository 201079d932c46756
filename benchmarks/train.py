"""Training throughput: seq/s and achieved TFLOP/s per config, CPU and CUDA (issue 3, item 4).

    python benchmarks/train.py                                   # CPU: cat-mel_2bar_small, batch 64
    python benchmarks/train.py --threads 1 2 --kernels step torch  # our step kernels vs torch.lstm only
    python benchmarks/train.py --device cuda                     # cat-mel_2bar_big + hierdec-mel_16bar, batch 512
    python benchmarks/train.py --config hierdec-trio_16bar --batch 256 --data loader --examples_path shards/x

Columns: steps/s over the timed run (and, on CPU, from the median step time), seq/s, CPU seconds
per step (process time: with 1 thread, the work a step costs whatever the load), GFLOP per
sequence, achieved TFLOP/s and its share of the peak, and the 1-minute load average.

Each row runs real training steps of the real model through `musicvae.train.optimisation_step`, the
function the trainer itself calls:
LR and ε set for the step (`set_optimizer_step`), zero_grad, forward under the trainer's precision
(bf16 autocast + TF32 on CUDA, fp32 on CPU), backward, Magenta's clipping (`process_gradients`),
Adam (`make_optimizer`: fused on CUDA), and the on-device loss sums the loop keeps for logging. The
global step starts at --start-step and advances, so β and the scheduled-sampling probability move as
in training (the SS configs decode step by step from step 0 on: p > 0 there).

Data (--data):
  synthetic  batches made once on the device: the model and optimiser alone;
  loader     the trainer's data path every step: `epoch_batches` permutations, `Examples.batch`
             (host gather of narrow bool/float arrays, pinned, non-blocking copy, widening on the
             device). Examples come from --examples_path (`musicvae convert` shards, or MIDI files
             converted on the fly before timing) or, without it, random valid windows (one-hot per
             output part, full length) in the converter's dtypes. This is the "data loading
             included" figure.
  both       (default) one row of each.

FLOPs are counted analytically per sequence (see `model_flops`): every LSTM step 2·(in + n)·4n per
layer and direction, the initial-state, μ/σ and output projections, all ×3 for forward + backward.
The count is the model's nominal work: kernels that skip work (a constant z projected once per
sequence, no input gradients for data) make the achieved figure a little higher than the work done.
NADE's and GrooVAE's heads are not counted. Peak (--peak-tflops, TFLOP/s): by default measured
here, a bf16 8192³ matmul on CUDA; on CPU an fp32 2048³ sgemm on one thread, timed in CPU seconds
(process time) and multiplied by the row's thread count, so it is what the cores reach when they
run, not lowered by other processes on a shared machine: the fp32 FMA peak as MKL reaches it.

CPU notes. Threads are set per row with torch.set_num_threads. The OpenMP runtime's busy-wait makes
2 threads on a shared 2-core machine collapse (5× slower than 1 thread when another process runs),
so this script sets OMP_WAIT_POLICY=PASSIVE before importing torch unless the environment already
sets it (--omp-wait active to keep spinning). `music_vae_train` on a shared CPU should be started
the same way: `OMP_WAIT_POLICY=PASSIVE music_vae_train ...`. --kernels torch runs the plain
`torch.lstm` (oneDNN on CPU) model for the before/after comparison.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

if __name__ == "__main__":  # must precede the OpenMP runtime's start, i.e. importing torch
    _wait = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--omp-wait=")), None)
    if _wait is None and "--omp-wait" in sys.argv[:-1]:
        _wait = sys.argv[sys.argv.index("--omp-wait") + 1]
    os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE" if _wait == "active" else "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import musicvae.nn.lstm as lstm_module  # noqa: E402
from musicvae.configs import Config, get_config  # noqa: E402
from musicvae.train import (  # noqa: E402
    Examples,
    _array_dtypes,
    _precision,
    config_family,
    epoch_batches,
    make_optimizer,
    open_source,
    optimisation_step,
)

CPU_DEFAULT = [("cat-mel_2bar_small", 64)]
CUDA_DEFAULT = [("cat-mel_2bar_big", 512), ("hierdec-mel_16bar", 512)]


# --- FLOPs -------------------------------------------------------------------------------------------


def _lstm_step(inp: int, n: int) -> int:
    return 2 * (inp + n) * 4 * n


def _bidirectional(inp: int, sizes: tuple[int, ...], steps: int) -> int:
    flops, width = 0, inp
    for n in sizes:
        flops += 2 * steps * _lstm_step(width, n)
        width = 2 * n
    return flops


def _flat_decoder(kind: str, out_depth: int, rnn_out: int, z: int, ctrl: int, sizes: tuple[int, ...], steps: int,
                  output_depths: tuple[int, ...]) -> int:
    if kind == "split_multi_out":
        return sum(_flat_decoder("categorical", d, d, z, ctrl, sizes, steps, ()) for d in output_depths)
    state = 2 * sum(sizes)
    per_step = _lstm_step(out_depth + z + ctrl, sizes[0]) + sum(_lstm_step(a, b) for a, b in zip(sizes, sizes[1:]))
    return 2 * z * state + steps * (per_step + 2 * sizes[-1] * rnn_out)


def model_flops(config: Config) -> int:
    """Forward + backward FLOPs of one training sequence (3 × the forward matmuls)."""
    hp, spec, conv = config.hparams, config.model, config.data_converter
    steps, z = hp.max_seq_len, hp.z_size
    inp = conv.input_depth + conv.control_depth
    if spec.encoder == "hierarchical":
        enc, width = 0, inp
        for level in range(len(spec.level_lengths)):
            enc += _bidirectional(width, hp.enc_rnn_size, steps // math.prod(spec.level_lengths[:level]))
            width = 2 * hp.enc_rnn_size[-1]
    else:
        enc = _bidirectional(inp, hp.enc_rnn_size, steps)
    fwd = enc + 2 * (2 * 2 * hp.enc_rnn_size[-1] * z)  # μ and σ
    out, ctrl, sizes = conv.output_depth, conv.control_depth, hp.dec_rnn_size
    if spec.decoder == "hierarchical":
        segments, seg_len = spec.level_lengths
        fwd += 2 * z * 2 * sum(sizes) + segments * (
            _lstm_step(1, sizes[0]) + sum(_lstm_step(a, b) for a, b in zip(sizes, sizes[1:]))
        )  # conductor
        core = _flat_decoder(spec.core_decoder, out, out, sizes[-1], ctrl, sizes, seg_len, spec.output_depths)
        fwd += segments * core
    else:
        fwd += _flat_decoder(spec.decoder, out, out, z, ctrl, sizes, steps, spec.output_depths)
    return 3 * fwd


# --- peaks -------------------------------------------------------------------------------------------


def measure_peak(device: torch.device, threads: int, seconds: float = 2.0) -> float:
    """TFLOP/s of a large matmul (best of several rounds): bf16 8192³ on CUDA; on CPU an fp32 2048³
    sgemm on one thread timed in CPU seconds, times `threads` (what the cores do when they run: other
    processes on a shared machine do not lower it)."""
    cpu = device.type == "cpu"
    if cpu:
        saved_threads = torch.get_num_threads()
        torch.set_num_threads(1)
    n, dtype = (2048, torch.float32) if cpu else (8192, torch.bfloat16)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    clock = time.process_time if cpu else time.perf_counter
    best, deadline = 0.0, time.perf_counter() + seconds
    reps = 2 if cpu else 20
    while True:
        _sync(device)
        t = clock()
        for _ in range(reps):
            torch.mm(a, b, out=out)
        _sync(device)
        rate = 2 * n**3 * reps / (clock() - t) / 1e12
        best = max(best, rate * threads if cpu else rate)
        if time.perf_counter() > deadline:
            if cpu:
                torch.set_num_threads(saved_threads)
            return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- data --------------------------------------------------------------------------------------------


def random_examples(config: Config, n: int, seed: int = 0) -> Examples:
    """n random full-length windows in the converter's shapes and dtypes (one-hot per output part)."""
    conv, t = config.data_converter, config.hparams.max_seq_len
    rng = np.random.default_rng(seed)
    io_dtype, control_dtype = _array_dtypes(config_family(config.name))

    def one_hot(depths: tuple[int, ...] | list[int], dtype: np.dtype) -> np.ndarray:
        parts = []
        for d in depths:
            part = np.zeros((n, t, d), dtype)
            if d:
                np.put_along_axis(part, rng.integers(0, d, (n, t, 1)), 1, axis=-1)
            parts.append(part)
        return np.concatenate(parts, -1)

    if io_dtype == np.float32:  # GrooVAE: hits, velocities, offsets
        outputs = rng.random((n, t, conv.output_depth), dtype=np.float32)
        inputs = rng.random((n, t, conv.input_depth), dtype=np.float32)
    else:
        depths = config.model.output_depths or (conv.output_depth,)
        outputs = one_hot(depths, io_dtype)
        inputs = outputs if conv.input_depth == conv.output_depth else one_hot([conv.input_depth], io_dtype)
    controls = one_hot([conv.control_depth], control_dtype) if conv.control_depth else np.zeros((n, t, 0), control_dtype)
    return Examples(inputs, outputs, controls, np.full(n, t, np.int32))


class Batches:
    """Batches for every step: fixed device tensors (synthetic) or the trainer's loader path."""

    def __init__(self, config: Config, batch: int, device: torch.device, mode: str, examples: Examples) -> None:
        self.device, self.mode, self.examples, self.batch = device, mode, examples, batch
        self.epoch, self.order = 0, []
        if mode == "synthetic":
            self.fixed = examples.batch(np.arange(batch), device)

    def next(self):
        if self.mode == "synthetic":
            return self.fixed
        if not self.order:
            self.order = epoch_batches(len(self.examples), self.batch, 0, self.epoch)
            self.epoch += 1
        return self.examples.batch(self.order.pop(0), self.device)


# --- one row -----------------------------------------------------------------------------------------


def run_row(args, name: str, batch: int, threads: int, data: str, kernels: str, device: torch.device,
            examples: Examples, peak: float) -> dict:
    lstm_module.STEP_KERNELS = {"step": "cpu" if device.type == "cpu" else "all", "auto": "cpu", "torch": "off"}[kernels]
    torch.set_num_threads(threads)
    config = get_config(name).with_hparams(f"batch_size={batch}" + (f",{args.hparams}" if args.hparams else ""))
    hp = config.hparams
    torch.manual_seed(0)
    net = config.build_model().to(device).train()
    model = torch.compile(net) if args.compile else net
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, hp, device)
    autocast = _precision(device)
    batches = Batches(config, batch, device, data, examples)
    sums = torch.zeros(5, device=device)
    step = args.start_step

    def train_step() -> None:
        nonlocal step
        sums.add_(optimisation_step(model, optimizer, params, hp, batches.next(), step, autocast)[1])
        step += 1

    for _ in range(args.warmup):
        train_step()
    _sync(device)
    load_before = os.getloadavg()[0]
    done, t0, c0, times = 0, time.perf_counter(), time.process_time(), []
    while done < args.min_steps or time.perf_counter() - t0 < args.seconds:
        t = time.perf_counter()
        train_step()
        done += 1
        if device.type == "cuda" and done % 10 == 0:
            _sync(device)  # keep the host at most ~10 steps ahead
        times.append(time.perf_counter() - t)
    _sync(device)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    flops_seq = model_flops(config)
    steps_s = done / wall
    tflops = steps_s * batch * flops_seq / 1e12
    row = {
        "device": _device_name(device), "config": name, "batch": batch, "threads": threads, "data": data,
        "kernels": kernels, "steps": done, "steps_per_s": steps_s, "seq_per_s": steps_s * batch,
        # CPU only (CUDA steps are asynchronous): the median step, less sensitive to other processes
        "median_steps_per_s": 1 / float(np.median(times)) if device.type == "cpu" else float("nan"),
        "cpu_s_per_step": cpu / done, "gflop_per_seq": flops_seq / 1e9, "tflops": tflops,
        "peak_tflops": peak, "pct_peak": 100 * tflops / peak if peak else float("nan"),
        "load": (load_before + os.getloadavg()[0]) / 2, "loss": float(sums[0] / (done + args.warmup)),
        "sampling_probability": float(result_p(hp, step)),
    }
    del net, model, optimizer, batches
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def result_p(hp, step: int) -> float:
    from musicvae.nn.decoders import sampling_probability

    return sampling_probability(hp, step, True)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu:{platform.processor() or platform.machine()}"


def _load_examples(args, config_name: str, batch: int) -> Examples:
    config = get_config(config_name)
    if args.examples_path:
        source = open_source(config, args.examples_path, "data", None, "train", 0, args.num_workers)
        return source.examples(0)
    return random_examples(config, max(4 * batch, 256))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="cpu, cuda, auto (default: cuda if available)")
    p.add_argument("--config", nargs="+", default=None,
                   help="configs (default: cat-mel_2bar_small on CPU; cat-mel_2bar_big hierdec-mel_16bar on CUDA)")
    p.add_argument("--batch", type=int, nargs="+", default=None,
                   help="batch size per config (one value for all, default: 64 on CPU, 512 on CUDA)")
    p.add_argument("--threads", type=int, nargs="+", default=None,
                   help="CPU threads per row (default: 1 and 2 on CPU; torch's default on CUDA)")
    p.add_argument("--data", choices=["synthetic", "loader", "both"], default="both")
    p.add_argument("--examples_path", nargs="*", default=None,
                   help="shards or MIDI for the loader rows (default: random valid windows in memory)")
    p.add_argument("--num_workers", type=int, default=2, help="MIDI conversion workers (loader rows from MIDI)")
    p.add_argument("--kernels", nargs="+", choices=["auto", "step", "torch"], default=["auto"],
                   help="auto: the default dispatch (step kernels on CPU, torch.lstm/cuDNN on CUDA); step: step "
                   "kernels everywhere; torch: torch.lstm only (the plain port)")
    p.add_argument("--seconds", type=float, default=10.0, help="timed seconds per row (default: 10)")
    p.add_argument("--min-steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 2 CPU, 10 CUDA)")
    p.add_argument("--start-step", type=int, default=0, help="global step of the first step (β, sampling)")
    p.add_argument("--hparams", default="", help="extra hparams, e.g. sampling_rate=0 style overrides")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak for the %% column (default: measured)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA)")
    p.add_argument("--omp-wait", choices=["passive", "active"], default="passive",
                   help="OMP_WAIT_POLICY unless already set in the environment (default: passive)")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args(argv)

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    defaults = CUDA_DEFAULT if device.type == "cuda" else CPU_DEFAULT
    names = args.config or [n for n, _ in defaults]
    if args.batch is None:
        batches = [dict(defaults).get(n, 512 if device.type == "cuda" else 64) for n in names]
    else:
        batches = args.batch * len(names) if len(args.batch) == 1 else args.batch
    if len(batches) != len(names):
        p.error("--batch takes one value or one per --config")
    threads_list = args.threads or ([1, 2] if device.type == "cpu" else [torch.get_num_threads()])
    if args.warmup is None:
        args.warmup = 10 if device.type == "cuda" else 2
    datas = ["synthetic", "loader"] if args.data == "both" else [args.data]

    print(f"# {time.strftime('%Y-%m-%d %H:%M')}  torch {torch.__version__}  {_device_name(device)}  "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}  cores={os.cpu_count()}", flush=True)
    peaks: dict[int, float] = {}
    rows = []
    header = (f"{'device':<24} {'config':<20} {'batch':>5} {'thr':>3} {'data':<9} {'kernels':<7} {'steps/s':>8} "
              f"{'median':>7} {'seq/s':>8} {'cpu-s/step':>10} {'GFLOP/seq':>9} {'TFLOP/s':>8} {'peak':>7} {'%peak':>6} {'load':>5}")
    print(header, flush=True)
    for name, batch in zip(names, batches):
        examples = _load_examples(args, name, batch)
        for threads in threads_list:
            torch.set_num_threads(threads)
            if args.peak_tflops is not None:
                peak = args.peak_tflops
            else:
                if threads not in peaks:
                    peaks[threads] = measure_peak(device, threads)
                peak = peaks[threads]
            for kernels in args.kernels:
                for data in datas:
                    row = run_row(args, name, batch, threads, data, kernels, device, examples, peak)
                    rows.append(row)
                    print(f"{row['device'][:24]:<24} {name:<20} {batch:>5} {threads:>3} {data:<9} {kernels:<7} "
                          f"{row['steps_per_s']:>8.3f} {row['median_steps_per_s']:>7.3f} {row['seq_per_s']:>8.1f} {row['cpu_s_per_step']:>10.3f} "
                          f"{row['gflop_per_seq']:>9.3f} {row['tflops']:>8.4f} {peak:>7.3f} {row['pct_peak']:>5.1f}% "
                          f"{row['load']:>5.2f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
