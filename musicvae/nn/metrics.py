"""Magenta's eval metrics (spec §5) as streamable statistics.

Every metric is a pair (numerator, denominator) of tensors with a leading segment axis [S, ...]
(S = 1 except in hierarchical decoders). Pairs add up across batches; the value of a metric is
mean(numerator / denominator) over its trailing axes (0 where the denominator is 0), which covers
both plain means (trailing shape []) and `tf.metrics.mean_per_class_accuracy` (trailing [classes]:
the mean over *all* classes, absent ones counting 0, as TF does).

Names follow Magenta: `metrics/accuracy`, `metrics/mean_per_class_accuracy`, `loss`,
`losses/r_loss`, ... Multi-stream decoders name each stream `<metric>/output_<i>`; hierarchical
decoders report `segment/<NNN>/<metric>` per segment. As in Magenta, `<metric>` is then the mean
over segments and over streams of those values, not a pooled count. (Magenta's flat multi-output
trio decoder has no stream mean; adding it gives every config an overall `metrics/accuracy`.)
"""

from __future__ import annotations

import re
from collections import defaultdict

import torch
from torch import Tensor

Stats = dict[str, tuple[Tensor, Tensor]]

_STREAM = re.compile(r"^(.*)/output_\d+$")


def segment_sum(x: Tensor, segments: int) -> Tensor:
    """Sum x [B, T, ...] over batch and time within each of `segments` equal time spans -> [S, ...]."""
    return x.unflatten(1, (segments, -1)).sum(dim=(0, 2))


def batch_mean_stats(values: Tensor) -> tuple[Tensor, Tensor]:
    """A per-example [B] or per-batch [] quantity as a streaming mean (tf.metrics.mean)."""
    values = values.detach().reshape(-1)
    return values.sum().reshape(1), values.new_full((1,), values.numel())


class EvalMetrics:
    """Accumulates `Stats` over batches; `compute()` gives Magenta's metric values."""

    def __init__(self) -> None:
        self.totals: dict[str, list[Tensor]] = {}

    def update(self, stats: Stats) -> None:
        for name, (num, den) in stats.items():
            num, den = num.detach().double(), den.detach().double()
            if name in self.totals:
                self.totals[name][0] += num
                self.totals[name][1] += den
            else:
                self.totals[name] = [num.clone(), den.clone()]

    def compute(self) -> dict[str, float]:
        values: dict[str, float] = {}
        for name, (num, den) in self.totals.items():
            ratio = torch.where(den > 0, num / den.clamp(min=1e-300), torch.zeros_like(num))
            per_segment = ratio.reshape(ratio.shape[0], -1).mean(dim=1).tolist()
            if len(per_segment) > 1:
                for s, v in enumerate(per_segment):
                    values[f"segment/{s:03d}/{name}"] = v
            values[name] = sum(per_segment) / len(per_segment)
        streams: dict[str, list[float]] = defaultdict(list)
        for name, v in values.items():
            match = _STREAM.match(name)
            if match:
                streams[match.group(1)].append(v)
        for base, vs in streams.items():
            values.setdefault(base, sum(vs) / len(vs))
        return dict(sorted(values.items()))
