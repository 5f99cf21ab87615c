#!/usr/bin/env python3
"""Runs the simulator in the paper's setting (12 nodes, 400 Gbit/s, Llama-2 7B/13B/70B) and
prints the Markdown tables of docs/simulation.md; writes the TTFT CDF plots to docs/sim/.

Usage: python3 scripts/sim_paper.py [path/to/faascale]   (default: target/release/faascale)
Synthetic bursts are averaged over 8 seeds; the Azure traces are replayed once (no randomness
with one model; the seed maps requests onto models otherwise).
"""
import json, os, statistics, subprocess, sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target/release/faascale")
TRACES = os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "traces"))
CONV = os.path.join(TRACES, "AzureLLMInferenceTrace_conv.csv")
CODE = os.path.join(TRACES, "AzureLLMInferenceTrace_code.csv")
SYSTEMS = "faascale,serverlessllm,faasnet,nccl,always-warm"
FIELDS = ["ttft_s_p50", "ttft_s_p90", "ttft_s_p99", "tpot_s_mean", "slo_attainment", "gpu_seconds", "served_by_pipelines"]


def simulate(args, seed, svg=None):
    cmd = [BIN, "simulate", "--nodes", "12", "--system", SYSTEMS, "--seed", str(seed), "--json"] + args
    if svg:
        cmd += ["--svg", os.path.join(ROOT, "docs", "sim", svg)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["systems"]


def scenario(title, args, seeds=(0,), svg=None):
    runs = [simulate(args, s, svg if i == 0 else None) for i, s in enumerate(seeds)]
    shown = " ".join(a.replace(TRACES, "../shared/data/traces") for a in args)
    print(f"\n### {title}\n")
    print(f"`faascale simulate --nodes 12 --system {SYSTEMS} {shown}`" + (f", mean of seeds {seeds[0]}–{seeds[-1]}" if len(seeds) > 1 else ""))
    print("\n| system | TTFT p50 s | p90 s | p99 s | TPOT ms | SLO (TTFT ≤ 1 s) | GPU-s | GPU-s vs always-warm | requests first served by a pipeline |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    warm = statistics.mean(r["always-warm"]["gpu_seconds"] for r in runs)
    for name in SYSTEMS.split(","):
        m = {f: statistics.mean(r[name][f] for r in runs) for f in FIELDS}
        print(f"| {name} | {m['ttft_s_p50']:.3f} | {m['ttft_s_p90']:.3f} | {m['ttft_s_p99']:.3f} | {m['tpot_s_mean']*1e3:.1f} | "
              f"{m['slo_attainment']*100:.1f} % | {m['gpu_seconds']:.0f} | {m['gpu_seconds']/warm:.2f} | {m['served_by_pipelines']:.0f} |")


def main():
    seeds = tuple(range(1, 9))
    burst13 = "synthetic:rate=1,burst=100,burst_at_s=60,burst_len_s=20,duration_s=180"
    burst70 = "synthetic:rate=0.5,burst=60,burst_at_s=60,burst_len_s=30,duration_s=180"
    scenario("Azure conversation trace, Llama-2-7B, 20× speed", ["--trace", CONV, "--model", "llama-2-7b", "--speedup", "20"])
    scenario("Azure conversation trace, Llama-2-13B, 20× speed", ["--trace", CONV, "--model", "llama-2-13b", "--speedup", "20"], svg="conv-13b.svg")
    scenario("Azure conversation trace, Llama-2-70B (2 GPUs per node), 4× speed", ["--trace", CONV, "--model", "llama-2-70b", "--gpus-per-node", "2", "--speedup", "4"])
    scenario("Azure code trace, Llama-2-13B, 20× speed", ["--trace", CODE, "--model", "llama-2-13b", "--speedup", "20"])
    scenario("Azure code trace on three models (7B, 13B, 70B; 2 GPUs per node), 10× speed, keep-alive 10 s",
             ["--trace", CODE, "--model", "llama-2-7b,llama-2-13b,llama-2-70b", "--gpus-per-node", "2", "--speedup", "10", "--keep-alive-s", "10"],
             svg="code-3models.svg")
    scenario("Synthetic burst, Llama-2-13B: 1 request/s, 100× for 20 s", ["--trace", burst13, "--model", "llama-2-13b"], seeds, svg="burst-13b.svg")
    scenario("Same burst, the model warm in host memory on 4 nodes", ["--trace", burst13, "--model", "llama-2-13b", "--warm-nodes", "4"], seeds, svg="burst-13b-warm4.svg")
    scenario("Synthetic burst, Llama-2-70B (2 GPUs per node): 0.5 request/s, 60× for 30 s", ["--trace", burst70, "--model", "llama-2-70b", "--gpus-per-node", "2"], seeds, svg="burst-70b.svg")


if __name__ == "__main__":
    main()
