"""Tables, Markdown and the train_ddp.py recommendation for benchmarks/train_throughput.py.

A *row* is the dict one variant's run produced (see ``train_throughput.run_variant``) plus
what the parent added (MFU, speed-up, logits difference, final status).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

BASELINE = "fp32"  # the earlier version's setup: fp32, default memory format, no cudnn.benchmark
WORTHWHILE = 0.05  # a speed-up below this is within run-to-run noise and not worth code
_KERNEL_FIELDS = ("dtype", "channels_last", "cudnn_benchmark", "strict_fp32", "stem", "compile", "batch")

COLUMNS = (
    "variant",
    "clips/s",
    "step ms",
    "x base",
    "MFU",
    "peak mem GB",
    "conv err",
    "logits d",
    "data wait",
    "status",
)


def _num(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a" if value is None else str(value)
    return format(value, fmt)


def row_cells(row: dict) -> list[str]:
    conv = row.get("conv_check") or {}
    mfu = row.get("mfu")
    status = row["status"]
    error = (row.get("error") or "").splitlines()[0][:60] if row.get("error") else ""
    if error:  # "CRASHED (SIGSEGV)" is both; show it once
        status = error if error.startswith(status) else f"{status} ({error})"
    return [
        row["name"],
        _num(row.get("clips_per_s"), ".2f"),
        _num(row.get("step_ms"), ".1f"),
        _num(row.get("speedup_vs_baseline"), ".2f"),
        "n/a" if mfu is None else f"{100 * mfu:.1f}% ({row.get('mfu_precision')})",
        _num(row.get("peak_mem_gb"), ".1f"),
        _num(conv.get("max_rel_error"), ".1e"),
        _num(row.get("logits_rel_diff"), ".1e"),
        f"{100 * row['data_wait_fraction']:.1f}%"
        if is_loader_row(row) and row.get("data_wait_fraction") is not None
        else "-",
        status,
    ]


def is_loader_row(row: dict) -> bool:
    """Fed by a real DataLoader (videos or the frame cache): measures the input pipeline."""
    return bool(row.get("loader") or row.get("cache"))


def format_table(rows: Sequence[dict]) -> str:
    """Fixed-width text table, one line per variant."""
    cells = [list(COLUMNS)] + [row_cells(r) for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 or i == len(COLUMNS) - 1 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))
        ).rstrip()
        for line in cells
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def markdown_table(rows: Sequence[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row_cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def _flags(row: dict) -> tuple[str, dict[str, Any]]:
    amp = {"fp32": "off", "bf16": "bf16", "fp16": "fp16"}[row["dtype"]]
    config = {
        "amp": amp,
        "channels_last": "on" if row["channels_last"] else "off",
        "cudnn_benchmark": bool(row["cudnn_benchmark"]),
        "compile": bool(row["compile"]),
    }
    flags = (
        f"--amp {amp} --channels-last {config['channels_last']} "
        f"--{'' if config['cudnn_benchmark'] else 'no-'}cudnn-benchmark "
        f"--{'' if config['compile'] else 'no-'}compile"
    )
    return flags, config


def recommend(rows: Sequence[dict]) -> dict[str, Any]:
    """The fastest correct variant, and the fastest one train_ddp.py can express today.

    Correct = status OK (ran, and every convolution passed the per-layer check).  Loader
    variants measure the input pipeline, not the step, and are left out.  Stem variants
    and strict-fp32 runs need code changes in train_ddp.py / resnet3d, so the flags come
    from the fastest variant without them.
    """
    ok = [r for r in rows if r["status"] == "OK" and not is_loader_row(r) and r.get("clips_per_s")]
    if not ok:
        return {"fastest": None, "notes": ["no variant ran correctly"]}
    fastest = max(ok, key=lambda r: r["clips_per_s"])
    expressible = [r for r in ok if r["stem"] == "plain" and not r["strict_fp32"]]
    out: dict[str, Any] = {"fastest": fastest["name"], "notes": []}
    if expressible:
        best = max(expressible, key=lambda r: r["clips_per_s"])
        flags, config = _flags(best)
        out.update(fastest_train_ddp=best["name"], train_ddp_flags=flags, train_ddp_config=config)
        if fastest is not best:
            gain = fastest["clips_per_s"] / best["clips_per_s"] - 1
            verdict = (
                "worth a resnet3d/train_ddp option"
                if gain >= WORTHWHILE
                else f"under {100 * WORTHWHILE:.0f}%: not worth a code change"
            )
            out["notes"].append(f"{fastest['name']} is {100 * gain:.1f}% faster than {best['name']}: {verdict}")
        if best["compile"]:
            eager = [
                r
                for r in expressible
                if not r["compile"]
                and all(r[k] == best[k] for k in ("dtype", "channels_last", "cudnn_benchmark", "batch"))
            ]
            if eager:
                gain = best["clips_per_s"] / eager[0]["clips_per_s"] - 1
                out["notes"].append(
                    f"torch.compile adds {100 * gain:.1f}% over {eager[0]['name']} "
                    f"(first step {best.get('first_step_s', float('nan')):.0f} s)"
                )
    for row in rows:
        if is_loader_row(row) and row["status"] == "OK" and row.get("data_wait_fraction") is not None:
            twin = next((r for r in ok if all(r[k] == row[k] for k in _KERNEL_FIELDS)), None)
            share = f", {row['clips_per_s'] / twin['clips_per_s']:.0%} of {twin['name']}'s clips/s" if twin else ""
            out["notes"].append(
                f"{row['name']}: data wait {100 * row['data_wait_fraction']:.1f}% of the step "
                f"time{share} ({row.get('input', '')})"
            )
    wrong = [r["name"] for r in rows if r["status"] == "WRONG"]
    if wrong:
        out["notes"].append("excluded as WRONG (a convolution off its reference): " + ", ".join(wrong))
    return out


def markdown_report(report: dict) -> str:
    env, s, flops = report["environment"], report["settings"], report["flops"]
    rec = report.get("recommendation") or {}
    gpu = env.get("gpu_name") or f"CPU ({env.get('cpu_count')} cores)"
    lines = [
        f"Measured {env['date']} on {gpu}"
        + (f" (driver {env['driver']})" if env.get("driver") else "")
        + f"; torch {env['torch']}, CUDA {env.get('cuda') or '-'}, cuDNN {env.get('cudnn') or '-'}"
        + (f" (enabled: {env.get('cudnn_enabled')})" if env.get("cudnn") else "")
        + ".",
        f"ResNet3D-{s['depth']}, {s['frames']} x {s['size']}^2 clips, batch {s['batch_size']} per device, "
        f"{s['warmup']} warm-up + {s['steps']} timed steps per variant; "
        f"{flops['training_gflops_per_clip']:.2f} GFLOP per training clip (counted forward + backward; "
        f"analytic check {flops['analytic_training_gflops_per_clip']:.2f}).",
    ]
    if env.get("peaks"):
        lines.append(
            f"MFU against the {env['peaks']['label']} datasheet peaks (dense TFLOP/s): "
            + ", ".join(f"{k} {v:g}" for k, v in env["peaks"]["tflops"].items())
            + (
                f"; a large bf16 matrix product measured {env['matmul_bf16_tflops']:.0f} TFLOP/s here"
                if env.get("matmul_bf16_tflops")
                else ""
            )
            + "."
        )
    lines += ["", markdown_table(report["variants"]), ""]
    if rec.get("fastest"):
        lines.append(f"Fastest correct variant: **{rec['fastest']}**.")
    if rec.get("train_ddp_flags"):
        lines.append(f"Fastest that train_ddp.py expresses: {rec['fastest_train_ddp']} = `{rec['train_ddp_flags']}`.")
    for note in rec.get("notes", []):
        lines.append(f"- {note}")
    for warning in report.get("warnings", []):
        lines.append(f"- WARNING: {warning}")
    lines += [
        "",
        "Columns: `x base` = clips/s over the `fp32` row (the earlier version's setup: fp32, "
        "default memory format, no cudnn.benchmark, eager); MFU = counted FLOPs x clips/s / peak "
        "of the precision in brackets (fp32 with TF32 allowed counts against the TF32 peak); "
        "`conv err` = worst relative error of any convolution (output, input and weight "
        "gradients) against a float64 cuDNN-free reference at the model's shapes -- above the "
        "precision's tolerance the variant is WRONG; `logits d` = first-step logits against a "
        "strict-fp32 cuDNN-free run (informational: a randomly initialised ResNet3D amplifies "
        "rounding, so tens of percent are normal for bf16); `data wait` = time blocked on the "
        "loader / step time.",
    ]
    return "\n".join(lines) + "\n"
