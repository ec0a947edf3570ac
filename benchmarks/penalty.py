"""Benchmark: the OrthoReg penalty (forward + backward) on ViT-B-32-shaped weights.

Four implementations timed in one run, interleaved so machine noise hits all alike:
  ours    orthoreg_pl.penalties.ortho_penalty_of(W, W0): matrices batched by shape (one bmm per shape
          forward and backward), ΔW = W − W0 formed inside and again in the backward, W0 on the device;
  matrix  the same products one matrix at a time (ortho_penalty_per_matrix on ΔW): the previous path;
  plain   the reference's way: per matrix copy W0 from the CPU, form ΔWᵀΔW − I explicitly, autograd;
  floor   the products no exact implementation avoids, one matrix at a time: one Gram product
          (forward) and one product of the same size (backward), on precomputed ΔW.
Prints median times, the ratios plain/ours, ours/floor and matrix/floor, the memory the penalty
keeps for its backward (CUDA), and the largest relative difference of the values and gradients. Random init (no download): ``python benchmarks/penalty.py [--device cuda]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from modes import saved_for_backward_bytes  # benchmarks/modes.py

from orthoreg_pl.models import create_clip
from orthoreg_pl.penalties.ortho import ortho_penalty_of, ortho_penalty_per_matrix, uses_row_gram


def vit_weights(
    arch: str, device: torch.device
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """(W on device with grad, W0 on device, W0 on the CPU) for every 2-D weight of the image tower."""
    torch.manual_seed(0)
    visual = create_clip(arch).visual  # open_clip's model; the project's tiny configs registered too
    w0_cpu = [p.detach().clone() for p in visual.parameters() if p.ndim == 2]
    w0_dev = [w.to(device) for w in w0_cpu]
    weights = [(w + 0.01 * torch.randn_like(w)).requires_grad_() for w in w0_dev]
    return weights, w0_dev, w0_cpu


def ours(weights, w0_dev, w0_cpu, norm, gram):
    return ortho_penalty_of(weights, w0_dev, norm=norm, gram=gram)


def per_matrix(weights, w0_dev, w0_cpu, norm, gram):
    return ortho_penalty_per_matrix([w - w0 for w, w0 in zip(weights, w0_dev)], norm=norm, gram=gram)


def plain(weights, w0_dev, w0_cpu, norm, gram):
    total = 0.0
    for w, w0 in zip(weights, w0_cpu):
        delta = w - w0.to(w.device, copy=True)
        g = delta @ delta.T if uses_row_gram(delta.shape, gram) else delta.T @ delta
        term = torch.norm(g - torch.eye(g.shape[0], device=w.device), p="fro")
        total = total + (term**2 if norm == "fro_squared" else term)
    return total


def floor(deltas, gram):
    for d in deltas:
        rows = uses_row_gram(d.shape, gram)
        g = d @ d.T if rows else d.T @ d
        _ = g @ d if rows else d @ g


def kept_for_backward(fn, weights, w0_dev, w0_cpu, args) -> int:
    """Bytes the penalty's graph keeps for its backward beyond the weights and W0 themselves (which
    the model keeps anyway): the tensors autograd saves, counted once per storage."""
    return saved_for_backward_bytes(
        lambda: fn(weights, w0_dev, w0_cpu, args.norm, args.gram), resident=[*weights, *w0_dev]
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", default="ViT-B-32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--norm", default="fro", choices=["fro", "fro_squared"])
    parser.add_argument("--gram", default="min_side", choices=["min_side", "columns"])
    parser.add_argument(
        "--reps", type=int, default=None, help="timed repetitions (default: 5 on CPU, 30 on GPU)"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    reps = args.reps or (30 if device.type == "cuda" else 5)
    weights, w0_dev, w0_cpu = vit_weights(args.arch, device)
    deltas = [(w - w0).detach() for w, w0 in zip(weights, w0_dev)]

    def run_penalty(fn):
        for w in weights:
            w.grad = None
        value = fn(weights, w0_dev, w0_cpu, args.norm, args.gram)
        value.backward()
        return value.detach(), [w.grad.clone() for w in weights]

    (v_ours, g_ours), (v_plain, g_plain) = run_penalty(ours), run_penalty(plain)  # also warm-up
    floor(deltas, args.gram)
    run_penalty(per_matrix)
    tasks = {
        "ours": lambda: run_penalty(ours),
        "matrix": lambda: run_penalty(per_matrix),
        "plain": lambda: run_penalty(plain),
        "floor": lambda: floor(deltas, args.gram),
    }
    times: dict[str, list[float]] = {k: [] for k in tasks}
    for _ in range(reps):
        for name, task in tasks.items():
            sync(device)
            start = time.perf_counter()
            task()
            sync(device)
            times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    value_diff = ((v_ours - v_plain).abs() / v_plain.abs()).item()
    grad_diff = max(((a - b).norm() / b.norm().clamp_min(1e-30)).item() for a, b in zip(g_ours, g_plain))

    n = len(weights)
    print(
        f"OrthoReg penalty, {args.arch} image tower ({n} matrices), norm={args.norm}, gram={args.gram}, device={device}, {reps} reps"
    )
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    for name in tasks:
        print(f"  {name:6s} median {1e3 * med[name]:9.2f} ms   (min {1e3 * min(times[name]):9.2f} ms)")
    print(f"  plain / ours  = {med['plain'] / med['ours']:.2f}x   (target >= 3x)")
    print(
        f"  ours  / floor = {med['ours'] / med['floor']:.2f}x   (target <= 1.0x: batching beats the per-matrix floor)"
    )
    print(f"  matrix / floor = {med['matrix'] / med['floor']:.2f}x   (the per-matrix path)")
    for name, fn in (("ours", ours), ("matrix", per_matrix), ("plain", plain)):
        kept = kept_for_backward(fn, weights, w0_dev, w0_cpu, args)
        print(f"  kept for the backward, {name:6s} {kept / 2**20:8.1f} MiB")
    print(
        f"  value: ours {v_ours.item():.6f}  plain {v_plain.item():.6f}  max rel diff {value_diff:.2e}  (target <= 1e-5)"
    )
    print(f"  gradient max rel diff {grad_diff:.2e}")


if __name__ == "__main__":
    main()
