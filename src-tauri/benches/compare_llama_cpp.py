#!/usr/bin/env python3
"""Speed of smollm3-bot against llama.cpp on the same GGUF, same threads, same machine, one run.

    python3 src-tauri/benches/compare_llama_cpp.py [--model F.gguf] [--threads 2] [--reps 3]
        [--kernels avx512|avx2|neon|generic] [--llama native|avx2]

Makes the full-size synthetic model with `smollm3-bot synth --preset 3b --quant q4_k_m` when no
model is given, installs llama-cpp-python from PyPI if missing (it compiles llama.cpp), then
measures each side in its own process (so peak RSS is per side): load time, prefill of
--prompt tokens, decode of --gen tokens, and decode after 4K tokens of context. Prints
min/median/max of --reps runs and the ratios ours / llama.cpp; writes target/bench/compare.json.

`--kernels` forces our kernel path (SMOLLM3_KERNELS). `--llama avx2` compares with a llama.cpp
built for AVX2 + FMA + F16C only (no AVX-512), in its own virtual environment under
target/bench/ (built once, a few minutes): the fair opponent of our AVX2 path on a machine
that has AVX-512. `--llama native` (the default) is llama.cpp built for this CPU.
"""
import argparse, json, os, resource, subprocess, sys, time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
LLAMA_VERSION = "0.3.36"


# llama.cpp builds to compare with: the CMake flags of each, and where its Python lives.
LLAMA_BUILDS = {
    "native": "-DGGML_NATIVE=ON",
    "avx2": "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_AVX512=OFF -DGGML_AVX512_VNNI=OFF "
            "-DGGML_AVX512_VBMI=OFF -DGGML_AVX512_BF16=OFF -DGGML_AVX_VNNI=OFF -DGGML_FMA=ON -DGGML_F16C=ON",
}


def ensure_llama_cpp(build):
    """The Python interpreter that has llama-cpp-python built with `build`'s flags."""
    if build == "native":
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            env = dict(os.environ, CMAKE_ARGS=os.environ.get("CMAKE_ARGS", LLAMA_BUILDS["native"]))
            subprocess.run([sys.executable, "-m", "pip", "install", f"llama-cpp-python=={LLAMA_VERSION}"], check=True, env=env)
        return sys.executable
    venv = os.path.join(ROOT, "target", "bench", f"venv-llama-{build}")
    python = os.path.join(venv, "bin", "python")
    probe = [python, "-c", "import llama_cpp"]
    if not os.path.exists(python) or subprocess.run(probe, capture_output=True).returncode != 0:
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        env = dict(os.environ, CMAKE_ARGS=LLAMA_BUILDS[build], FORCE_CMAKE="1")
        subprocess.run([python, "-m", "pip", "install", "--no-cache-dir", "--no-binary", "llama-cpp-python",
                        f"llama-cpp-python=={LLAMA_VERSION}"], check=True, env=env)
    return python


def damon_pageout():
    """Whether the kernel's DAMON runs a scheme that pages memory out (some virtual machines
    do, to give memory back to their host): it drops the model's file pages from the page cache
    a few seconds after they were last read, so a run after an idle stretch loads from the disk
    and its figures swing. Benchmarks are meant with it off (as on a desktop)."""
    import glob
    for state in glob.glob("/sys/kernel/mm/damon/admin/kdamonds/*/state"):
        try:
            if open(state).read().strip() != "on":
                continue
            actions = glob.glob(os.path.join(os.path.dirname(state), "contexts/*/schemes/*/action"))
            if any(open(a).read().strip() == "pageout" for a in actions):
                return state
        except OSError:
            pass
    return None


def stats(v):
    s = sorted(v)
    return {"min": s[0], "median": s[len(s) // 2], "max": s[-1], "runs": v}


def llama_side(a):
    """Runs in a child process: measures llama.cpp with one setting."""
    import llama_cpp
    import llama_cpp.llama_cpp as low
    orig = low.llama_model_default_params

    def params():
        p = orig()
        p.use_extra_bufts = a.repack == "on"
        return p

    low.llama_model_default_params = params
    loads, prefills, decodes, decodes_ctx = [], [], [], []
    n_ctx = a.context + a.prompt + a.gen + 16
    llm = None
    for rep in range(a.reps):
        llm = None
        t0 = time.time()
        llm = llama_cpp.Llama(model_path=a.model, n_ctx=n_ctx, n_threads=a.threads, n_threads_batch=a.threads,
                              n_batch=512, n_ubatch=512, flash_attn=a.flash == "on", verbose=False)
        loads.append(time.time() - t0)
        vocab = 128000
        prompt = [(i * 7919 + rep * 104729 + 13) % vocab for i in range(a.prompt)]
        llm.reset()
        t0 = time.time()
        llm.eval(prompt)
        prefills.append(len(prompt) / (time.time() - t0))
        tok = 1000
        t0 = time.time()
        for _ in range(a.gen):
            llm.eval([tok])
        decodes.append(a.gen / (time.time() - t0))
        if a.context:
            llm.reset()
            ctx = [(i * 7919 + 99991) % vocab for i in range(a.context)]
            for i in range(0, len(ctx), 512):
                llm.eval(ctx[i:i + 512])
            t0 = time.time()
            for _ in range(a.gen):
                llm.eval([tok])
            decodes_ctx.append(a.gen / (time.time() - t0))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"load_s": stats(loads), "prefill_tps": stats(prefills), "decode_tps": stats(decodes),
                      "decode_ctx_tps": stats(decodes_ctx) if decodes_ctx else None, "peak_rss_mb": rss}))


def ours(a, bin_path, context):
    env = dict(os.environ)
    if a.kernels:
        env["SMOLLM3_KERNELS"] = a.kernels
    cmd = [bin_path, "bench", "--model", a.model, "--prompt-tokens", str(a.prompt), "--gen-tokens", str(a.gen),
           "--threads", str(a.threads), "--reps", str(a.reps), "--json"]
    if context:
        cmd += ["--context-tokens", str(context)]
    if a.kv_f32:
        cmd.append("--kv-f32")
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout)


def theirs(a, python, flash, repack, context):
    cmd = [python, __file__, "--llama-side", "--model", a.model, "--threads", str(a.threads),
           "--reps", str(a.reps), "--prompt", str(a.prompt), "--gen", str(a.gen), "--context", str(context),
           "--flash", flash, "--repack", repack]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "smollm3-bot"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--context", type=int, default=3584, help="extra context for the long-context decode figure")
    ap.add_argument("--kv-f32", action="store_true", help="our KV cache in F32 (both sides keep F16 by default)")
    ap.add_argument("--kernels", help="our kernel path: avx512, avx2, neon or generic (default: the best this CPU has)")
    ap.add_argument("--llama", default="native", choices=sorted(LLAMA_BUILDS), help="the llama.cpp build to compare with")
    ap.add_argument("--llama-side", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--flash", default="on", help=argparse.SUPPRESS)
    ap.add_argument("--repack", default="off", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.llama_side:
        return llama_side(a)
    if not os.path.exists(a.bin):
        subprocess.run(["cargo", "build", "--release"], check=True, cwd=ROOT)
    if not a.model:
        a.model = os.path.join(ROOT, "models", "smollm3-3b-synth-q4_k_m.gguf")
        if not os.path.exists(a.model):
            subprocess.run([a.bin, "synth", "--preset", "3b", "--quant", "q4_k_m", "--seed", "0", "--out", a.model], check=True)
    python = ensure_llama_cpp(a.llama)
    damon = damon_pageout()
    if damon:
        print(f"warning: DAMON pages memory out ({damon} is on): cached model files are dropped when idle "
              f"and the figures swing; `echo off > {damon}` (as root) for steady runs", file=sys.stderr)
    results = {"model": a.model, "threads": a.threads, "reps": a.reps, "prompt": a.prompt, "gen": a.gen,
               "llama_build": a.llama, "llama_cmake_args": LLAMA_BUILDS[a.llama],
               "date": time.strftime("%Y-%m-%d %H:%M"), "damon_pageout": bool(damon), "cpu": subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()}
    # Warm the page cache once so both sides load from memory.
    with open(a.model, "rb") as f:
        while f.read(1 << 24):
            pass
    results["ours"] = ours(a, a.bin, 0)
    results["ours_ctx"] = ours(a, a.bin, a.context)
    results["llama_flash_norepack"] = theirs(a, python, "on", "off", a.context)
    results["llama_flash_repack"] = theirs(a, python, "on", "on", 0)
    med = lambda d, k: (d.get(k) or {}).get("median") or float("nan")
    o, l, lr = results["ours"], results["llama_flash_norepack"], results["llama_flash_repack"]
    best_prefill = max(med(l, "prefill_tps"), med(lr, "prefill_tps"))
    best_decode = max(med(l, "decode_tps"), med(lr, "decode_tps"))
    rows = [
        ("load s", med(o, "load_s"), med(l, "load_s"), med(lr, "load_s")),
        (f"prefill {a.prompt} tok/s", med(o, "prefill_tps"), med(l, "prefill_tps"), med(lr, "prefill_tps")),
        (f"decode {a.gen} tok/s", med(o, "decode_tps"), med(l, "decode_tps"), med(lr, "decode_tps")),
        (f"decode at {a.context + a.prompt} ctx tok/s", med(results["ours_ctx"], "decode_tps"), med(l, "decode_ctx_tps"), float("nan")),
        ("peak RSS MB", o["peak_rss_mb"], l["peak_rss_mb"], lr["peak_rss_mb"]),
    ]
    print(f"\nmodel {a.model}, {a.threads} threads, medians of {a.reps}")
    print(f"ours: {o.get('kernels')} kernels; llama.cpp {LLAMA_VERSION}, {a.llama} build; cpu {results['cpu']}")
    print(f"{'':28} {'ours':>10} {'llama.cpp':>10} {'llama.cpp':>10}")
    print(f"{'':28} {'':>10} {'fa, no rep':>10} {'fa, repack':>10}")
    for name, x, y, z in rows:
        print(f"{name:28} {x:10.2f} {y:10.2f} {z:10.2f}")
    ratios = {
        "prefill_vs_best": med(o, "prefill_tps") / best_prefill,
        "decode_vs_best": med(o, "decode_tps") / best_decode,
        "first_prefill_vs_best": (o.get("first_prefill_tps") or 0) / best_prefill,
        "decode_ctx_over_decode": med(results["ours_ctx"], "decode_tps") / med(o, "decode_tps"),
        "load_s": med(o, "load_s"),
        "rss_mb": o["peak_rss_mb"],
    }
    results["ratios"] = ratios
    print("\nratios: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
    out = os.path.join(ROOT, "target", "bench", "compare.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
