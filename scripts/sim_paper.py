#!/usr/bin/env python3
"""Regenerates every table of docs/simulation.md and the TTFT CDF plots in docs/sim/.

Usage: python3 scripts/sim_paper.py [path/to/faascale] [--jobs N]
(default binary: target/release/faascale; build it with `cargo build --release -p server`).

Every scenario runs over 16 seeds (`faascale simulate --seeds 1-16`) and pools all requests
of all seeds; each figure carries its 95 % bootstrap interval over seeds. A seed varies the
arrivals of a synthetic trace, and for the Azure traces the replayed window's start
(`--window-s`) and the mapping onto models. Plots show each system's median seed.

The tables replace what lies between the `<!-- sim_paper:NAME -->` and
`<!-- /sim_paper:NAME -->` markers of docs/simulation.md; the raw JSON of every run goes to
docs/sim/results.json.
"""
import concurrent.futures, json, os, re, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = [a for a in sys.argv[1:] if not a.startswith("--jobs")]
BIN = ARGS[0] if ARGS else os.path.join(ROOT, "target/release/faascale")
JOBS = int(next((a.split("=")[1] for a in sys.argv[1:] if a.startswith("--jobs=")), "1"))
# ../shared beside the checkout (/work/main/../shared), or two levels up from a worktree.
TRACES = next((p for p in (os.path.normpath(os.path.join(ROOT, *[".."] * up, "shared", "data", "traces")) for up in (1, 2))
               if os.path.isdir(p)), os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "traces")))
CONV = os.path.join(TRACES, "AzureLLMInferenceTrace_conv.csv")
CODE = os.path.join(TRACES, "AzureLLMInferenceTrace_code.csv")
DOC = os.path.join(ROOT, "docs", "simulation.md")
SEEDS = "1-16"
WINDOW = ["--window-s", "1800"]  # half of the one-hour traces, its start drawn by the seed
BASELINES = ["serverlessllm", "faasnet", "nccl"]
SYSTEMS = "faascale,serverlessllm,faasnet,nccl,always-warm"
BURST13 = "synthetic:rate=1,burst=100,burst_at_s=60,burst_len_s=20,duration_s=180"
BURST70 = "synthetic:rate=0.5,burst=60,burst_at_s=60,burst_len_s=30,duration_s=180"

SCENARIOS = [
    ("conv-7b", "Azure conversation trace, Llama-2-7B, 20× speed, 30-minute windows",
     ["--trace", CONV, "--model", "llama-2-7b", "--speedup", "20"] + WINDOW, None),
    ("conv-13b", "Azure conversation trace, Llama-2-13B, 20× speed, 30-minute windows",
     ["--trace", CONV, "--model", "llama-2-13b", "--speedup", "20"] + WINDOW, "conv-13b.svg"),
    ("conv-70b", "Azure conversation trace, Llama-2-70B (2 GPUs per node), 4× speed, 30-minute windows",
     ["--trace", CONV, "--model", "llama-2-70b", "--gpus-per-node", "2", "--speedup", "4"] + WINDOW, None),
    ("code-13b", "Azure code trace, Llama-2-13B, 20× speed, 30-minute windows",
     ["--trace", CODE, "--model", "llama-2-13b", "--speedup", "20"] + WINDOW, None),
    ("code-3models", "Azure code trace on three models (7B, 13B, 70B; 2 GPUs per node), 10× speed, keep-alive 10 s, 30-minute windows",
     ["--trace", CODE, "--model", "llama-2-7b,llama-2-13b,llama-2-70b", "--gpus-per-node", "2", "--speedup", "10",
      "--keep-alive-s", "10"] + WINDOW, "code-3models.svg"),
    ("burst-13b", "Synthetic burst, Llama-2-13B: 1 request/s, 100× for 20 s",
     ["--trace", BURST13, "--model", "llama-2-13b"], "burst-13b.svg"),
    ("burst-13b-warm4", "Same burst, the model warm in host memory on 4 nodes",
     ["--trace", BURST13, "--model", "llama-2-13b", "--warm-nodes", "4"], "burst-13b-warm4.svg"),
    ("burst-70b", "Synthetic burst, Llama-2-70B (2 GPUs per node): 0.5 request/s, 60× for 30 s",
     ["--trace", BURST70, "--model", "llama-2-70b", "--gpus-per-node", "2"], "burst-70b.svg"),
]

# One parameter varied at a time from the burst scenarios' defaults (H200 compute, SSD 5 GB/s,
# one warm copy), on the 13B and the 70B burst.
SENS_BASE = [("13B burst (1 request/s, 100× for 20 s)", ["--trace", BURST13, "--model", "llama-2-13b"]),
             ("70B burst (0.5 request/s, 60× for 30 s; 2 GPUs per node)",
              ["--trace", BURST70, "--model", "llama-2-70b", "--gpus-per-node", "2"])]
SENSITIVITY = (
    [("default: compute ×1, SSD 5 GB/s, 1 warm copy", [])]
    + [("compute ×0.5", ["--compute-speed", "0.5"]), ("compute ×2", ["--compute-speed", "2"])]
    + [(f"SSD {r} GB/s", ["--ssd-gbytes-per-s", str(r)]) for r in (12, 25)]
    + [(f"warm copies on {w} node{'s' if w > 1 else ''}", ["--warm-nodes", str(w)]) for w in (2, 4, 8, 12)]
)


def rel(args):
    return [a.replace(TRACES + "/", "../shared/data/traces/") for a in args]


def simulate(args, systems=SYSTEMS, svg=None):
    cmd = [BIN, "simulate", "--nodes", "12", "--system", systems, "--seeds", SEEDS, "--json"] + args
    if svg:
        cmd += ["--svg", os.path.join(ROOT, "docs", "sim", svg)]
    t = time.time()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    v = json.loads(out.strip().splitlines()[-1])
    print(f"  {time.time() - t:6.1f} s  {' '.join(rel(args))} {systems}", file=sys.stderr)
    return v["systems"] if "systems" in v else {v["system"]: v}


def ci(x, c, scale=1.0, fmt="{:.3f}"):
    return f"{fmt.format(x * scale)} [{fmt.format(c[0] * scale)}, {fmt.format(c[1] * scale)}]"


def ratio(base, fs, key):
    return base[key] / fs[key] if fs[key] > 0 else float("inf")


def ratio_ci(base, fs, key):
    """The ratio and a conservative interval from the two intervals (lo/hi, hi/lo)."""
    b, f = base[key + "_ci"], fs[key + "_ci"]
    lo = b[0] / f[1] if f[1] > 0 else float("inf")
    hi = b[1] / f[0] if f[0] > 0 else float("inf")
    return f"{ratio(base, fs, key):.2f} [{lo:.2f}, {hi:.2f}]"


def table(name, title, args, r):
    out = [f"### {title}", "",
           f"`faascale simulate --nodes 12 --system {SYSTEMS} --seeds {SEEDS} {' '.join(rel(args))}`"
           + " (and `--system faascale --pipeline-routing any` for the second row)", "",
           "| system | TTFT p50 s [95 % CI] | p90 s | p99 s | TPOT ms | SLO (TTFT ≤ 1 s) | GPU-s per run | vs always-warm | first served by a pipeline | moved at hand-off |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    warm = r["always-warm"]["gpu_seconds"]
    for sys_name in ["faascale", "faascale (no routing rule)"] + BASELINES + ["always-warm"]:
        s = r[sys_name]
        out.append(
            f"| {sys_name} | {ci(s['ttft_s_p50'], s['ttft_s_p50_ci'])} | {ci(s['ttft_s_p90'], s['ttft_s_p90_ci'])} | "
            f"{ci(s['ttft_s_p99'], s['ttft_s_p99_ci'])} | {s['tpot_s_mean'] * 1e3:.1f} | "
            f"{ci(s['slo_attainment'], s['slo_attainment_ci'], 100, '{:.1f}')} % | "
            f"{ci(s['gpu_seconds'], s['gpu_seconds_ci'], 1, '{:.0f}')} | {s['gpu_seconds'] / warm:.2f} | "
            f"{s['served_by_pipelines']} | {s['moved_requests']} |")
    return "\n".join(out)


def run_scenario(sc):
    name, title, args, svg = sc
    r = simulate(args, svg=svg)
    r["faascale (no routing rule)"] = simulate(args + ["--pipeline-routing", "any"], "faascale")["faascale"]
    return name, r


def run_sensitivity(item):
    (base, args), (label, extra) = item
    return base, label, simulate(args + extra, "faascale," + ",".join(BASELINES))


def plan(nodes, sources, model_bytes, algo):
    cmd = [BIN, "plan", "--nodes", str(nodes), "--sources", str(sources), "--model-bytes", str(model_bytes),
           "--blocks", "8", "--link-gbps", "400", "--algo", algo, "--json"]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])


def multicast_table():
    out = ["`faascale plan --nodes N --sources K --model-bytes X --blocks 8 --link-gbps 400 --algo A --json`: "
           "`complete_s`, and `first_copy_s` against `first_copy_lower_bound_s` (k sources: S / (k·R) + latency); "
           "nccl in NCCL's 512 KiB chunks. Model outputs, seconds.", "",
           "| case | faascale complete | nccl complete | faasnet complete | S/R | faascale first copy / bound | nccl first copy / bound | λScale paper, measured: λScale / FaaSNet / NCCL |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    cases = [("Llama-2-7B (13.5 GB) 1→4", 5, 1, 13_476_839_424, "0.45 / 0.68 / 0.93"),
             ("Llama-2-7B 1→8", 9, 1, 13_476_839_424, "—"),
             ("Llama-2-7B 4→12", 16, 4, 13_476_839_424, "—"),
             ("Llama-2-70B (138 GB) 1→4", 5, 1, 137_953_316_864, "—"),
             ("Llama-2-70B 1→8", 9, 1, 137_953_316_864, "9.27 / 16.25 / 12.91")]
    for label, n, k, size, paper in cases:
        r = {a: plan(n, k, size, a) for a in ("faascale", "nccl", "faasnet")}
        f, c = r["faascale"], r["nccl"]
        out.append(f"| {label} | {f['complete_s']:.3f} | {c['complete_s']:.3f} | {r['faasnet']['complete_s']:.3f} | "
                   f"{size / 50e9:.3f} | {f['first_copy_s']:.3f} / {f['first_copy_lower_bound_s']:.3f} | "
                   f"{c['first_copy_s']:.3f} / {c['first_copy_lower_bound_s']:.3f} | {paper} |")
    return "\n".join(out)


def headline(results):
    out = ["Ratios baseline ÷ faascale (above 1: faascale lower), P90 TTFT and GPU-seconds per run; in brackets the "
           "ratio of the interval ends (conservative: the two 95 % intervals' extremes).", "",
           "| scenario | " + " | ".join(f"{b} P90 ÷ faascale | {b} GPU-s ÷ faascale" for b in BASELINES) + " |",
           "| --- | " + " | ".join("--- | ---" for _ in BASELINES) + " |"]
    for name, _, _, _ in SCENARIOS:
        r = results[name]
        f = r["faascale"]
        out.append(f"| {name} | " + " | ".join(
            f"{ratio_ci(r[b], f, 'ttft_s_p90')} | {ratio_ci(r[b], f, 'gpu_seconds')}" for b in BASELINES) + " |")
    return "\n".join(out)


# The earlier page's P90 TTFT and GPU-seconds (one run of the whole hour for the real traces, a
# mean of seeds 1–8 for the bursts; before shared NICs, the busiest-GPU bound, re-prefill at
# hand-off, routing and NCCL's chunks), in seconds: system → (P90, GPU-s).
EARLIER = {
    "conv-7b": {"faascale": (0.086, 2094), "serverlessllm": (0.086, 2100), "faasnet": (0.086, 2094), "nccl": (0.086, 2094)},
    "conv-13b": {"faascale": (0.270, 2201), "serverlessllm": (3.221, 2203), "faasnet": (0.270, 2201), "nccl": (0.270, 2201)},
    "conv-70b": {"faascale": (1.386, 21228), "serverlessllm": (1.971, 21264), "faasnet": (1.386, 21228), "nccl": (1.386, 21228)},
    "code-13b": {"faascale": (1.198, 2077), "serverlessllm": (1.788, 2078), "faasnet": (1.265, 2077), "nccl": (1.229, 2077)},
    "code-3models": {"faascale": (5.417, 7171), "serverlessllm": (6.154, 7149), "faasnet": (5.953, 7185), "nccl": (5.955, 7174)},
    "burst-13b": {"faascale": (0.192, 878), "serverlessllm": (3.913, 887), "faasnet": (0.393, 880), "nccl": (0.199, 879)},
    "burst-13b-warm4": {"faascale": (0.111, 804), "serverlessllm": (1.504, 887), "faasnet": (0.235, 862), "nccl": (0.210, 850)},
    "burst-70b": {"faascale": (2.770, 2255), "serverlessllm": (24.586, 2473), "faasnet": (5.256, 2257), "nccl": (2.788, 2243)},
}


def earlier(results):
    out = ["| scenario | " + " | ".join(f"{b} P90 ÷ faascale" for b in BASELINES) + " | "
           + " | ".join(f"{b} GPU-s ÷ faascale" for b in BASELINES) + " |",
           "| --- | " + " | ".join("---" for _ in BASELINES * 2) + " |"]
    for name, _, _, _ in SCENARIOS:
        old, new = EARLIER[name], results[name]
        cells = [f"{old[b][0] / old['faascale'][0]:.2f} → {ratio(new[b], new['faascale'], 'ttft_s_p90'):.2f}" for b in BASELINES]
        cells += [f"{old[b][1] / old['faascale'][1]:.2f} → {ratio(new[b], new['faascale'], 'gpu_seconds'):.2f}" for b in BASELINES]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def sensitivity(rows):
    out = ["12 nodes, seeds 1–16 pooled; one setting varied at a time from the default. faascale's P90 TTFT and "
           "GPU-seconds per run [95 % CI], then baseline ÷ faascale for each (above 1: faascale lower).", "",
           "| scenario | setting | faascale P90 s | faascale GPU-s | " + " | ".join(f"{b} P90 ÷ | {b} GPU-s ÷" for b in BASELINES) + " |",
           "| --- | --- | --- | --- | " + " | ".join("--- | ---" for _ in BASELINES) + " |"]
    for base, label, r in rows:
        f = r["faascale"]
        out.append(f"| {base} | {label} | {ci(f['ttft_s_p90'], f['ttft_s_p90_ci'])} | {ci(f['gpu_seconds'], f['gpu_seconds_ci'], 1, '{:.0f}')} | "
                   + " | ".join(f"{ratio(r[b], f, 'ttft_s_p90'):.2f} | {ratio(r[b], f, 'gpu_seconds'):.2f}" for b in BASELINES) + " |")
    return "\n".join(out)


def replace(doc, name, text):
    pat = re.compile(rf"(<!-- sim_paper:{name} -->\n)(?:.*?\n)?(<!-- /sim_paper:{name} -->)", re.S)
    if not pat.search(doc):
        sys.exit(f"docs/simulation.md has no <!-- sim_paper:{name} --> … <!-- /sim_paper:{name} --> markers")
    return pat.sub(lambda m: m.group(1) + text + "\n" + m.group(2), doc)


def main():
    t0 = time.time()
    with concurrent.futures.ThreadPoolExecutor(JOBS) as pool:
        results = dict(pool.map(run_scenario, SCENARIOS))
        sens = list(pool.map(run_sensitivity, [(b, x) for b in SENS_BASE for x in SENSITIVITY]))
    # Wall-clock times left out: the file is then the same on every run.
    for r in list(results.values()) + [r for _, _, r in sens]:
        for v in r.values():
            v.pop("sim_wall_s", None)
    with open(os.path.join(ROOT, "docs", "sim", "results.json"), "w") as f:
        json.dump({"scenarios": results, "sensitivity": {f"{b}: {l}": r for b, l, r in sens}}, f, indent=1,
                  sort_keys=True)
    doc = open(DOC).read()
    doc = replace(doc, "scenarios", "\n\n".join(table(n, t, a, results[n]) for n, t, a, _ in SCENARIOS))
    doc = replace(doc, "headline", headline(results))
    doc = replace(doc, "sensitivity", sensitivity(sens))
    doc = replace(doc, "earlier", earlier(results))
    doc = replace(doc, "multicast", multicast_table())
    open(DOC, "w").write(doc)
    print(f"docs/simulation.md and docs/sim/ regenerated in {time.time() - t0:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
