#!/usr/bin/env python3
"""numpy (OpenBLAS) sgemm timings for the `gemm` benchmark binary.

y[m, n] = x[m, k] @ w[n, k].T in float32, the same product as kernels::matmul.
Thread count: OPENBLAS_NUM_THREADS (set by the caller before numpy loads).

Modes:
  numpy_sgemm.py --shapes 64,576,576 128,576,576   time those (m,n,k), one JSON line each
  numpy_sgemm.py --serve                           read "m n k min_seconds" lines on stdin,
                                                   answer one JSON line each (used by `gemm`)
The OpenBLAS configuration numpy uses is printed to stderr first.
"""
import json
import os
import statistics
import sys
import time

try:
    import numpy as np
except ImportError:
    sys.stderr.write("numpy_sgemm.py: numpy is not installed; install it with `pip install numpy`\n")
    sys.exit(3)


def show_config():
    try:
        from threadpoolctl import threadpool_info

        for info in threadpool_info():
            if info.get("user_api") == "blas":
                sys.stderr.write(
                    "numpy BLAS: {} {} arch={} threads={} ({})\n".format(
                        info.get("internal_api"),
                        info.get("version"),
                        info.get("architecture"),
                        info.get("num_threads"),
                        info.get("filepath"),
                    )
                )
                return
    except ImportError:
        pass
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg.get("Build Dependencies", {}).get("blas", {})
        sys.stderr.write("numpy BLAS: {} {} ({})\n".format(blas.get("name"), blas.get("version"), blas.get("openblas configuration")))
    except Exception:  # older numpy: print whatever it prints
        np.show_config()
    sys.stderr.write("numpy BLAS threads: OPENBLAS_NUM_THREADS={}\n".format(os.environ.get("OPENBLAS_NUM_THREADS")))


def time_sgemm(m, n, k, min_seconds):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((m, k), dtype=np.float32)
    w = rng.standard_normal((n, k), dtype=np.float32)
    y = np.empty((m, n), dtype=np.float32)
    wt = w.T
    for _ in range(3):
        np.matmul(x, wt, out=y)
    times = []
    start = time.perf_counter()
    while len(times) < 5 or (time.perf_counter() - start < min_seconds and len(times) < 10000):
        t0 = time.perf_counter()
        np.matmul(x, wt, out=y)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"m": m, "n": n, "k": k, "median_s": med, "gflops": 2.0 * m * n * k / med / 1e9, "reps": len(times)}


def main(argv):
    show_config()
    if "--serve" in argv:
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        for line in sys.stdin:
            parts = line.split()
            if not parts:
                continue
            m, n, k = (int(p) for p in parts[:3])
            min_s = float(parts[3]) if len(parts) > 3 else 0.3
            sys.stdout.write(json.dumps(time_sgemm(m, n, k, min_s)) + "\n")
            sys.stdout.flush()
        return 0
    if "--shapes" in argv:
        for spec in argv[argv.index("--shapes") + 1 :]:
            m, n, k = (int(p) for p in spec.split(","))
            print(json.dumps(time_sgemm(m, n, k, 0.3)), flush=True)
        return 0
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
