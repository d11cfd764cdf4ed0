"""A roofline for one step: the HLO's FLOPs and bytes against a chip's peak FLOP/s and memory bandwidth.

  step >= max(compute, memory),  compute = FLOPs / peak,  memory = bytes accessed / bandwidth
  MFU ceiling = model FLOPs (loop-aware, flops.py) / (step bound · peak)

FLOPs come from XLA's cost analysis of the step: of the compiled program where this machine can compile
it, of the lowered one otherwise (`bench.py --lower_for`, no device needed). Bytes: the compiled program's
cost analysis counts them after fusion. A lowered program is not fused yet (XLA's count for it treats
every elementwise op as a trip to memory: 10-20x too high), so for it the bytes are those a perfectly
fusing compiler must still move: each matmul's and each kernel's (custom call's) operands and result,
and the step's inputs and outputs once (unfusable_bytes). That keeps the memory term a lower bound too.
XLA's analysis counts a while loop's body once whatever its trip count (the scan over loop iterations,
gradient accumulation) and kernels in custom calls (cuDNN, Pallas) as zero FLOPs; where the HLO's FLOPs
fall short of the loop-aware model FLOPs, FLOPs and bytes are both scaled up by that ratio.
The ceiling is the MFU the step could reach if it ran exactly at the roof; it includes recomputation
(remat) and the non-model work (optimizer, softmax) as overheads.

On a CPU the "chip" is this machine, measured in the same run: a large fp32 numpy matmul for the peak
and a large numpy copy for the bandwidth (bench.py compares the bound with the measured step).
"""

from __future__ import annotations

import dataclasses
import re
import time

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class Chip:
    """Dense bf16 peak FLOP/s and HBM bandwidth (bytes/s) of one chip."""

    name: str
    peak_flops: float
    hbm_bytes_per_s: float


CHIPS = {
    # NVIDIA H100 datasheet (nvidia.com/en-us/data-center/h100): SXM, BF16 Tensor Core 1,979 TFLOPS with
    # sparsity = 989 dense; GPU memory bandwidth 3.35 TB/s (HBM3).
    "h100": Chip("H100 SXM", 989e12, 3.35e12),
    # NVIDIA H200 datasheet (nvidia.com/en-us/data-center/h200): SXM, BF16 1,979 TFLOPS with sparsity = 989
    # dense; 4.8 TB/s (HBM3e).
    "h200": Chip("H200 SXM", 989e12, 4.8e12),
    # NVIDIA A100 datasheet (nvidia.com/en-us/data-center/a100): BF16 Tensor Core 312 TFLOPS dense (624
    # sparse); 80GB SXM 2,039 GB/s (HBM2e).
    "a100": Chip("A100 SXM 80GB", 312e12, 2.039e12),
    # cloud.google.com/tpu/docs/v4: peak compute per chip 275 TFLOPS (bf16), HBM2 bandwidth 1,200 GBps.
    "v4": Chip("TPU v4", 275e12, 1.2e12),
    # cloud.google.com/tpu/docs/v5e: peak compute per chip 197 TFLOPs (bf16), HBM2 16 GB, 819 GBps.
    "v5e": Chip("TPU v5e", 197e12, 819e9),
    # cloud.google.com/tpu/docs/v5p: peak compute per chip 459 TFLOPs (bf16), HBM2e 95 GB, 2,765 GBps.
    "v5p": Chip("TPU v5p", 459e12, 2.765e12),
}
CHIP_NAMES = (*CHIPS, "cpu")
COPY_BYTES = 256 * 2**20  # numpy copy for the CPU's memory bandwidth: far past every cache


@dataclasses.dataclass(frozen=True)
class Roofline:
    chip: str
    flops: float  # per step, as bounded (HLO FLOPs, at least the model's)
    bytes_accessed: float
    model_flops: float
    compute_s: float
    memory_s: float
    peak_flops: float

    @property
    def step_s(self) -> float:
        return max(self.compute_s, self.memory_s)

    @property
    def mfu_ceiling(self) -> float:
        return self.model_flops / (self.step_s * self.peak_flops)

    def line(self) -> str:
        """`roofline (h100): step >= X ms (compute Y ms, memory Z ms), MFU ceiling W%`."""
        return (
            f"roofline ({self.chip}): step >= {1e3 * self.step_s:.2f} ms (compute {1e3 * self.compute_s:.2f} ms, "
            f"memory {1e3 * self.memory_s:.2f} ms), MFU ceiling {100 * self.mfu_ceiling:.1f}%"
        )


def cost_of(stage) -> tuple[float, float]:
    """(FLOPs, bytes accessed) from a jax Lowered or Compiled stage's cost analysis (0 where absent)."""
    cost = stage.cost_analysis()
    if isinstance(cost, list | tuple):  # older JAX: one dict per program
        cost = cost[0] if cost else {}
    cost = cost or {}
    return float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))


_TENSOR = re.compile(r"tensor<([^>]*)>")
_DTYPE_BYTES = {"f64": 8, "i64": 8, "ui64": 8, "f32": 4, "i32": 4, "ui32": 4, "bf16": 2, "f16": 2, "i16": 2}
_NO_TRAFFIC_CALLS = ("@Sharding", "@SPMDFullToShardShape", "@SPMDShardToFullShape", "@xla.sdy")


def _tensor_bytes(spec: str) -> int:
    *dims, dtype = spec.split("x")
    return int(np.prod([int(d) for d in dims if d.isdigit()])) * _DTYPE_BYTES.get(dtype, 1)


def unfusable_bytes(lowered) -> float:
    """Bytes a perfectly fusing compiler still moves in a lowered program: matmul/kernel operands and results
    (each loop body once, as XLA's cost analysis), plus the program's inputs and outputs."""
    total = 0
    for line in lowered.as_text().splitlines():
        is_kernel = "stablehlo.custom_call" in line and not any(c in line for c in _NO_TRAFFIC_CALLS)
        if "stablehlo.dot_general" in line or "stablehlo.convolution" in line or is_kernel:
            total += sum(_tensor_bytes(t) for t in _TENSOR.findall(line.rsplit(" : ", 1)[-1]))
    for leaf in jax.tree_util.tree_leaves((lowered.in_avals, lowered.out_info)):
        total += int(np.prod(leaf.shape)) * np.dtype(leaf.dtype).itemsize
    return float(total)


def roofline(chip_name: str, chip: Chip, flops: float, bytes_accessed: float, model_flops: float) -> Roofline:
    """The bound for one step of `flops` and `bytes_accessed` (XLA's counts) on `chip`."""
    if 0 < flops < model_flops:  # loop bodies counted once, custom calls as zero (module docstring)
        bytes_accessed *= model_flops / flops
    flops = max(flops, model_flops)
    return Roofline(
        chip=chip_name,
        flops=flops,
        bytes_accessed=bytes_accessed,
        model_flops=model_flops,
        compute_s=flops / chip.peak_flops,
        memory_s=bytes_accessed / chip.hbm_bytes_per_s,
        peak_flops=chip.peak_flops,
    )


def measure_copy_bandwidth(n_bytes: int = COPY_BYTES, repeats: int = 5) -> float:
    """Bytes/s of a large numpy copy (read + write), median of `repeats`: this machine's memory roof."""
    src = np.ones(n_bytes // 4, np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # pages touched
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - t0)
    return 2 * n_bytes / float(np.median(times))


def cpu_chip(matmul_flops_per_s: float, copy_bytes_per_s: float | None = None) -> Chip:
    """This CPU as a chip: the measured fp32 matmul peak and copy bandwidth."""
    return Chip("cpu (measured)", matmul_flops_per_s, copy_bytes_per_s or measure_copy_bandwidth())
