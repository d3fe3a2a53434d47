"""Dense peak arithmetic rates of common training GPUs, for MFU (model FLOPs utilisation).

MFU = (counted model FLOPs per second actually achieved) / (the device's peak for the
precision the math runs in).  The peaks are the vendor datasheet figures *without* 2:4
structured sparsity (the datasheets print the sparse figure, twice the dense one, with an
asterisk), at boost clock; a power-limited card runs below them, so 100 % is unreachable
and even a large bf16 matrix product reaches about 80 %.

Sources (vendor datasheets; TFLOP/s, dense):
- NVIDIA H100 Tensor Core GPU datasheet: H100 SXM fp32 67, tf32 494.7, bf16/fp16 989.4;
  H100 PCIe fp32 51.2, tf32 378, bf16/fp16 756; H100 NVL fp32 60, tf32 417.5, bf16/fp16 835.5.
- NVIDIA H200 Tensor Core GPU datasheet: H200 SXM = H100 SXM rates (fp32 67, tf32 494.7,
  bf16/fp16 989.4); H200 NVL = H100 NVL rates.
- NVIDIA GH200 Grace Hopper datasheet: the Hopper GPU at H100 SXM rates.
- NVIDIA A100 Tensor Core GPU datasheet: fp32 19.5, tf32 156, bf16/fp16 312 (SXM and PCIe).
"""

from __future__ import annotations

# precision key -> TFLOP/s.  "tf32" is the rate of fp32 math on tensor cores (cuDNN/cuBLAS
# with allow_tf32); "fp32" the plain CUDA-core rate.
_H100_SXM = {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4}
_H100_PCIE = {"fp32": 51.2, "tf32": 378.0, "bf16": 756.0, "fp16": 756.0}
_HOPPER_NVL = {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5, "fp16": 835.5}
_A100 = {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0}

# (substrings that must all occur in the upper-cased device name, peaks); first match wins,
# so the more specific names come first.  torch.cuda.get_device_name() gives e.g.
# "NVIDIA H100 80GB HBM3" (SXM), "NVIDIA H100 PCIe", "NVIDIA H100 NVL", "NVIDIA H200",
# "NVIDIA H200 NVL", "NVIDIA GH200 480GB", "NVIDIA A100-SXM4-80GB", "NVIDIA A100 80GB PCIe".
PEAKS: list[tuple[tuple[str, ...], str, dict[str, float]]] = [
    (("H100", "PCIE"), "H100 PCIe", _H100_PCIE),
    (("H100", "NVL"), "H100 NVL", _HOPPER_NVL),
    (("H200", "NVL"), "H200 NVL", _HOPPER_NVL),
    (("GH200",), "GH200", _H100_SXM),
    (("H200",), "H200 SXM", _H100_SXM),
    (("H100",), "H100 SXM", _H100_SXM),
    (("A100",), "A100", _A100),
]


def lookup_peaks(device_name: str) -> tuple[str, dict[str, float]] | None:
    """(the table's name for the GPU, {precision: dense TFLOP/s}) or None for an unknown GPU."""
    upper = device_name.upper()
    for needles, label, peaks in PEAKS:
        if all(n in upper for n in needles):
            return label, dict(peaks)
    return None


def math_precision(dtype: str, tf32: bool) -> str:
    """The precision whose peak an fp32 / bf16 / fp16 training run is measured against.

    fp32 parameters with TF32 allowed run their convolutions on tensor cores in TF32 (and
    torch's cuDNN default allows it), so their MFU is against the TF32 peak; with TF32 off,
    against the plain fp32 peak.
    """
    if dtype == "fp32":
        return "tf32" if tf32 else "fp32"
    if dtype in ("bf16", "fp16"):
        return dtype
    raise ValueError(f"unknown dtype {dtype!r}; expected fp32, bf16 or fp16")
