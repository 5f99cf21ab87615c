# The torch ceilings of `faascale gpu-check` (mod.rs runs it as `python3 -c`, argv[1] the shapes as
# JSON): cuBLAS GEMM through torch.matmul and causal SDPA, mean microseconds per call, one JSON line.
import json, sys, torch
import torch.nn.functional as F
spec = json.loads(sys.argv[1])
dev = torch.device("cuda")
def t(f, warm=3, iters=20):
    for _ in range(warm): f()
    a = torch.cuda.Event(enable_timing=True); b = torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(iters): f()
    b.record(); torch.cuda.synchronize()
    return a.elapsed_time(b) * 1e3 / iters
out = {"torch": torch.__version__, "gemm": [], "sdpa": []}
for m, n, k in spec["gemm"]:
    A = torch.randn(m, k, device=dev, dtype=torch.bfloat16); W = torch.randn(n, k, device=dev, dtype=torch.bfloat16)
    out["gemm"].append(t(lambda: torch.matmul(A, W.t())))
for s, nh, nkv, hd in spec["sdpa"]:
    q = torch.randn(1, nh, s, hd, device=dev, dtype=torch.bfloat16)
    k = torch.randn(1, nkv, s, hd, device=dev, dtype=torch.bfloat16).repeat_interleave(nh // nkv, dim=1)
    v = torch.randn(1, nkv, s, hd, device=dev, dtype=torch.bfloat16).repeat_interleave(nh // nkv, dim=1)
    out["sdpa"].append(t(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), 2, 10))
print(json.dumps(out))
