"""What the diagnostics cost per training step: instrumented step vs a plain step, side by side.

    .venv/bin/python bench/diagnostics_overhead.py [--arch resnet18] [--image-size 112] [--batch-size 32] [--steps 12]

The instrumented step is the plain step plus what train.py adds: weight-gradient and weight norms per
layer group read in one sync (every step), and an activation probe on a sampled forward. The two
variants alternate step by step (ABBA) on the same batch, so machine noise hits both alike; the script
prints the median step time of each and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from torch.nn import functional as F

from training.diagnostics import ActivationProbe, StepRecorder
from training.models import create_model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=16, help="measured steps per variant")
    parser.add_argument("--sample-every", type=int, default=4, help="activation probe on every Nth step")
    args = parser.parse_args()
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = create_model(args.arch, 10, "none", "full").to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    recorder, probe = StepRecorder(model), ActivationProbe(model, max_samples=10**9)
    batch = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    targets = torch.randint(0, 10, (args.batch_size,), device=device)

    def step(instrumented: bool, index: int) -> float:
        started = time.perf_counter()
        sample = instrumented and index % args.sample_every == 0
        probe.active = sample
        loss = F.cross_entropy(model(batch), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if instrumented:
            grads, weights = recorder.norms()
            recorder.record_step(index, 1, loss.item(), 0.0, 0.0, grads, weights)
            if sample:
                probe.active = False
                probe.collect(index)
        optimizer.step()
        loss_value = loss.item()  # both variants read the loss, as any training loop does
        if device.type == "cuda":
            torch.cuda.synchronize()
        del loss_value
        return time.perf_counter() - started

    for i in range(2):  # warm-up
        step(False, i), step(True, i)
    plain, instrumented = [], []
    for i in range(args.steps):  # ABBA order: whichever runs second in a pair gets no systematic edge
        if i % 2:
            instrumented.append(step(True, i))
            plain.append(step(False, i))
        else:
            plain.append(step(False, i))
            instrumented.append(step(True, i))
    p, q = statistics.median(plain), statistics.median(instrumented)
    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads; {args.arch} full fine-tune, "
          f"batch {args.batch_size} at {args.image_size}px, {args.steps} alternating steps each (one run)")
    print(f"plain step         median {p * 1000:8.1f} ms")
    print(f"instrumented step  median {q * 1000:8.1f} ms  (norms every step, activation probe every {args.sample_every})")
    print(f"overhead ratio     {q / p:.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
