"""Benchmark: training-step time and peak memory of every fine-tuning mode, relative to `standard`.

Each (architecture, mode) runs in its own process so peak memory is its own: CUDA peak allocated on a
GPU; on a CPU the same quantity from the allocator's events (parameters, buffers and optimizer state,
plus the peak of one step's allocations, :func:`step_peak_bytes`); peak RSS is reported beside it. A step is what training_step does: forward,
CE (+ λ·penalty), backward, gradient clipping at 1.0, AdamW. For the *_ortho modes the worker also
times the penalty alone (forward + backward, the cost benchmarks/penalty.py measures), so the check
"ortho step ≤ base step + penalty + 3 % of the base step" uses figures from the same run.
``--precision bf16-mixed`` (or 16-mixed) runs the forward and the loss under autocast as Lightning's
mixed-precision plugin does (16-mixed with a gradient scaler); the first step's loss of every mode is
printed so a mixed-precision run can be compared with a 32-true one.
Baselines in the same run (``--modes standard linear linear@math-attention standard@tf32``):
``@math-attention`` runs a linear mode with attention on torch's math path inside the JVP (the path
before :mod:`orthoreg_pl.models.lean_attention`); ``@tf32`` at float32 matmul precision ``high``;
``@late-penalty`` an ``*_ortho`` mode with its penalty computed after the forward (as before).
Random init, no download: ``python benchmarks/modes.py [--archs orthoreg-tiny-vit ViT-B-32] [--batch 128]
[--precision 32-true|bf16-mixed|16-mixed]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable

import torch
import torch.nn.functional as F

from orthoreg_pl.models import ImageClassifier, create_clip
from orthoreg_pl.modules import MODES

MODE_ORDER = [
    "standard",
    "standard_ortho",
    "linear",
    "linear_ortho",
    "attn",
    "attn_ortho",
    "lora_attn",
    "lora_attn_ortho",
]


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def storage_bytes(tensors: Iterable[torch.Tensor]) -> dict[int, int]:
    """{storage address: bytes} of ``tensors``, each storage once (views share their base's)."""
    return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}


def saved_for_backward_bytes(fn, resident: Iterable[torch.Tensor] = ()) -> int:
    """Bytes of the distinct storages autograd keeps for the backward pass while ``fn()`` runs: the
    activation memory of a step, independent of the allocator (CPU RSS keeps freed memory around).
    Storages of the ``resident`` tensors (the weights, θ0) are left out: they exist anyway."""
    skip = storage_bytes(resident).keys()
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in skip:
            seen.update(storage_bytes([t]))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def step_peak_bytes(fn) -> int:
    """Peak bytes the CPU allocator holds above what was live when ``fn()`` started, from the profiler's
    allocation events: on a CPU, what CUDA's peak-allocated counter gives on a GPU (RSS keeps freed
    memory and counts the allocator's own caching)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
        key=lambda e: e.start_ns(),
    )
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def resident_bytes(module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes of what lives across steps: parameters, buffers (θ0) and the optimizer's state."""
    state = [t for entry in optimizer.state.values() for t in entry.values() if torch.is_tensor(t)]
    return sum(storage_bytes([*module.parameters(), *module.buffers(), *state]).values())


AUTOCAST = {"32-true": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


VARIANTS = {  # mode@variant: a baseline measured in the same run as the modes it is compared with
    "math-attention": "linear modes: attention by torch's math path inside the JVP (before lean_attention)",
    "tf32": "float32 matmuls at matmul precision 'high' (TF32 on a GPU), as trainer.matmul_precision=high",
    "late-penalty": "*_ortho modes: the penalty computed after the forward (its backward then runs first)",
}


def mode_variant(mode: str) -> tuple[type, str]:
    """(module class, float32 matmul precision) of ``mode`` or ``mode@variant`` (see VARIANTS)."""
    name, _, variant = mode.partition("@")
    if variant and variant not in VARIANTS:
        raise SystemExit(f"unknown variant @{variant} in {mode}; expected one of {sorted(VARIANTS)}")
    cls = MODES[name]
    if variant == "math-attention":
        cls = type(cls.__name__ + "MathAttention", (cls,), {"lean_attention": False})
    if variant == "late-penalty":
        cls = type(cls.__name__ + "LatePenalty", (cls,), {"penalty_before_forward": False})
    return cls, "high" if variant == "tf32" else "highest"


def worker(
    arch: str, mode: str, batch: int, steps: int, device: torch.device, precision: str = "32-true"
) -> dict:
    cls, matmul_precision = mode_variant(mode)
    torch.set_float32_matmul_precision(matmul_precision)
    baseline = _rss_bytes()
    torch.manual_seed(0)
    clip = create_clip(arch, None)
    size = clip.visual.image_size[0] if isinstance(clip.visual.image_size, tuple) else clip.visual.image_size
    head = F.normalize(torch.randn(10, clip.visual.output_dim), dim=-1) * 100
    module = cls(ImageClassifier(clip.visual, head), lam=1.0 if cls.uses_penalty else 0.0).to(device)
    del clip
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.1)
    images = torch.randn(batch, 3, size, size, device=device)
    labels = torch.randint(0, 10, (batch,), device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    dtype = AUTOCAST[precision]
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
    losses: list[float] = []

    def loss() -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss_ce, penalty = module.step_losses(images, labels, cls.uses_penalty)  # as training_step
            return loss_ce if penalty is None else loss_ce + module.hparams.lam * penalty

    def step() -> None:
        value = loss()
        losses.append(float(value.detach()))
        scaler.scale(value).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    times, penalty_times = [], []
    for i in range(steps + 1):  # the first step warms up (and allocates AdamW state)
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)
        if i:
            times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:  # the same quantity from the CPU allocator's events: what lives across steps + one step's peak
        peak = resident_bytes(module, optimizer) + step_peak_bytes(step)
    rss = _rss_bytes() - baseline
    for _ in range(steps + 1 if cls.uses_penalty else 0):  # after the peak is read: the steps' own
        _sync(device)
        start = time.perf_counter()
        module.penalty().backward()
        _sync(device)
        penalty_times.append(time.perf_counter() - start)
        optimizer.zero_grad(set_to_none=True)
    saved = saved_for_backward_bytes(
        loss, [*module.parameters(), *module.buffers()]
    )  # after the peak is read: its graph must not add to it
    return {
        "step_s": statistics.median(times),
        "penalty_s": statistics.median(penalty_times[1:] or penalty_times) if penalty_times else 0.0,
        "peak_bytes": peak,
        "rss_bytes": rss,
        "saved_bytes": saved,
        "first_loss": losses[0],
    }


def run_all(archs: list[str], modes: list[str], batch: int, steps: int, device: str, precision: str) -> dict:
    results: dict[str, dict[str, dict]] = {}
    for arch in archs:
        results[arch] = {}
        for mode in modes:
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                "--arch",
                arch,
                "--mode",
                mode,
                "--batch",
                str(batch),
                "--steps",
                str(steps),
                "--device",
                device,
                "--precision",
                precision,
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            results[arch][mode] = json.loads(out.strip().splitlines()[-1])
            print(f"  {arch:18s} {mode:16s} {results[arch][mode]}", file=sys.stderr, flush=True)
    return results


def report(results: dict, batch: int) -> None:
    for arch, by_mode in results.items():
        std = by_mode["standard"]
        print(
            f"\n{arch}, batch {batch}: ratios to standard (step {1e3 * std['step_s']:.1f} ms, peak {std['peak_bytes'] / 2**20:.0f} MiB)"
        )
        print(
            f"  {'mode':16s} {'time':>7s} {'memory':>7s} {'saved':>7s}   check  (saved: tensors kept for backward)"
        )
        for mode, r in by_mode.items():
            check = ""
            name = mode.partition("@")[0]
            base_name = name.removesuffix("_ortho")
            if name == "linear":
                ok = r["step_s"] <= 2 * std["step_s"] and r["peak_bytes"] <= 1.6 * std["peak_bytes"]
                check = f"target time <= 2x, memory <= 1.6x: {'met' if ok else 'MISSED'}"
            elif name != base_name and base_name in by_mode:
                base = by_mode[base_name]
                budget = base["step_s"] + r["penalty_s"] + 0.03 * base["step_s"]
                overhead = r["step_s"] - base["step_s"]
                check = (
                    f"+{1e3 * overhead:.1f} ms over {base_name}, penalty alone {1e3 * r['penalty_s']:.1f} ms: "
                    f"{'met' if r['step_s'] <= budget else 'MISSED'} (<= penalty + 3% of base); "
                    f"memory {r['peak_bytes'] / base['peak_bytes']:.3f}x of {base_name}"
                )
            memory, saved = r["peak_bytes"] / std["peak_bytes"], r["saved_bytes"] / std["saved_bytes"]
            print(
                f"  {mode:16s} {r['step_s'] / std['step_s']:6.2f}x {memory:6.2f}x {saved:6.2f}x   "
                f"loss {r['first_loss']:.5f}   {check}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--archs", nargs="+", default=["orthoreg-tiny-vit", "ViT-B-32"])
    parser.add_argument("--modes", nargs="+", default=MODE_ORDER)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 3 on CPU, 10 on GPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="32-true", choices=list(AUTOCAST))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--arch", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    args = parser.parse_args()
    steps = args.steps or (10 if args.device.startswith("cuda") else 3)
    if args.worker:
        print(
            json.dumps(
                worker(args.arch, args.mode, args.batch, steps, torch.device(args.device), args.precision)
            )
        )
        return
    print(
        f"torch {torch.__version__}, device {args.device}, precision {args.precision}, "
        f"threads {torch.get_num_threads()}, {steps} timed steps"
    )
    report(run_all(args.archs, args.modes, args.batch, steps, args.device, args.precision), args.batch)


if __name__ == "__main__":
    main()
