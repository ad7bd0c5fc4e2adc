#!/usr/bin/env python3
"""How fast this CPU runs a decode step's projections: few rows times every weight of the model.

Usage:
    python bench/decode_products.py [--hidden 512] [--intermediate 1376] [--layers 8] [--threads 2]

Builds random fp32 matrices of a Llama layer's four projections (qkv fused, o, gate/up fused, down) for
`--layers` layers, then times one pass over all of them, as a decode step makes it, for 1, 2, 4 and 8
rows: through `torch.mm(w, x.T)` and through oneDNN with pre-packed weights (the sampler's path on a
CPU, grpo.rollout.lean._Proj), medians of 10 passes. For scale it also prints the rate a `sum` streams
400 MB at and the fp32 2048^3 matmul rate. The defaults are the bench's 25M model (docs/performance.md,
"Generation is memory-bound": 101 MB of weights against a 32 MB L3, so every pass reads them from memory).
"""

import argparse
import statistics
import time

import torch


def median_seconds(fn, repeats: int = 10) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--intermediate", type=int, default=1376)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    h, f = args.hidden, args.intermediate
    shapes = [(3 * h, h), (h, h), (2 * f, h), (h, f)] * args.layers  # [N, K] of each projection
    weights = [torch.randn(n, k) for n, k in shapes]
    total = sum(w.nbytes for w in weights)

    big = torch.ones(100 * 2**20)  # 400 MB
    stream = big.nbytes / median_seconds(big.sum)
    del big
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    matmul = 2 * 2048**3 / median_seconds(lambda: a @ b, 5)
    print(f"{args.threads} threads: sum over 400 MB {stream / 1e9:.1f} GB/s; fp32 2048^3 matmul {matmul / 1e9:.1f} GFLOP/s")
    print(f"{len(weights)} projections, {total / 1e6:.0f} MB of fp32 weights, one pass each:")
    onednn = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    for rows in (1, 2, 4, 8):
        xs = {k: torch.randn(rows, k) for k in {k for _, k in shapes}}
        t_mm = median_seconds(lambda: [torch.mm(w, xs[w.shape[1]].t()) for w in weights])
        line = f"  {rows} rows: torch.mm {t_mm * 1e3:6.1f} ms {total / t_mm / 1e9:5.1f} GB/s"
        if onednn:
            packed = [torch.ops.mkldnn._reorder_linear_weight(w, rows) for w in weights]
            t_dnn = median_seconds(lambda: [torch.ops.mkldnn._linear_pointwise(xs[w.shape[1]], pw, None, "none", [], "")
                                            for w, pw in zip(weights, packed)])
            line += f" | oneDNN packed {t_dnn * 1e3:6.1f} ms {total / t_dnn / 1e9:5.1f} GB/s"
            del packed
        print(line)


if __name__ == "__main__":
    main()
