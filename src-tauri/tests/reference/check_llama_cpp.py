#!/usr/bin/env python3
"""Checks synthetic SmolLM3 models made by `smollm3-bot synth` against llama.cpp.

For each case it writes the model with our CLI, runs it in llama.cpp (PyPI llama-cpp-python,
which knows the `smollm3` architecture) and records llama.cpp's numbers as a small JSON file in
src-tauri/tests/fixtures/. The Rust test `tests/synth_reference.rs` regenerates the same model
(same seed, same bytes: the JSON records the sha256) and compares our logits with these, so the
test suite itself needs no llama.cpp.

    pip install llama-cpp-python==0.3.36   # compiles llama.cpp (minutes)
    cargo build && python3 src-tauri/tests/reference/check_llama_cpp.py [--bin target/debug/smollm3-bot]

With --check-3b FILE it also loads a full-size synthetic model in llama.cpp and in our CLI and
prints both greedy continuations.
"""
import argparse, hashlib, json, os, subprocess, sys, tempfile, time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
FIXTURES = os.path.join(ROOT, "src-tauri", "tests", "fixtures")
CASES = [("tiny", "f32", 11), ("tiny", "q8_0", 12), ("tiny", "q4_k_m", 13)]
TEXT = "<|im_start|>user\nWhat is 2+2? Answer in one word, please.<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n"


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def llama(path, n_ctx=256):
    from llama_cpp import Llama
    # F32 KV cache (GGML_TYPE_F32 = 0) so the comparison is not blurred by F16 rounding.
    return Llama(model_path=path, n_ctx=n_ctx, n_threads=2, n_batch=512, logits_all=True,
                 type_k=0, type_v=0, flash_attn=False, verbose=False)


def case(bin_path, preset, quant, seed, tmp):
    path = os.path.join(tmp, f"synth-{preset}-{quant}-s{seed}.gguf")
    subprocess.run([bin_path, "synth", "--preset", preset, "--quant", quant, "--seed", str(seed), "--out", path], check=True)
    llm = llama(path)
    n_vocab = llm.n_vocab()
    tokens = [(5 + 37 * i) % (n_vocab - 20) for i in range(24)]
    llm.reset()
    llm.eval(tokens)
    scores = [list(map(float, llm.scores[i])) for i in range(len(tokens))]
    top1 = [max(range(n_vocab), key=row.__getitem__) for row in scores]
    top5 = [sorted(((j, row[j]) for j in range(n_vocab)), key=lambda p: -p[1])[:5] for row in scores]
    greedy = []
    nxt = top1[-1]
    for _ in range(12):
        greedy.append(nxt)
        llm.eval([nxt])
        row = llm.scores[llm.n_tokens - 1]
        nxt = int(max(range(n_vocab), key=lambda j: row[j]))
    ids = llm.tokenize(TEXT.encode(), add_bos=False, special=True)
    out = {
        "preset": preset, "quant": quant, "seed": seed, "model_sha256": sha256(path),
        "llama_cpp_python": __import__("llama_cpp").__version__, "kv_type": "f32",
        "tokens": tokens, "last_logits": scores[-1], "top1": top1, "top5": top5, "greedy": greedy,
        "tokenize_text": TEXT, "tokenize_ids": list(ids),
    }
    name = os.path.join(FIXTURES, f"synth-{preset}-{quant}-s{seed}.llama-cpp.json")
    with open(name, "w") as f:
        json.dump(out, f)
    print(f"{name}: {len(tokens)} tokens, greedy {greedy[:6]}…")


def check_3b(bin_path, path):
    t0 = time.time()
    llm = llama(path, n_ctx=512)
    load = time.time() - t0
    prompt = list(range(1000, 1016))
    llm.eval(prompt)
    theirs = [float(x) for x in llm.scores[llm.n_tokens - 1]]
    out = subprocess.run([bin_path, "logits", "--model", path, "--tokens", ",".join(map(str, prompt))],
                         check=True, capture_output=True, text=True)
    ours = json.loads(out.stdout)["logits"]
    d = max(abs(a - b) for a, b in zip(ours, theirs))
    top = lambda v: max(range(len(v)), key=v.__getitem__)
    print(f"3B: last-position logits max |Δ| = {d:.4f}; top-1 ours {top(ours)} llama.cpp {top(theirs)}")
    seq = []
    for _ in range(8):
        row = llm.scores[llm.n_tokens - 1]
        nxt = int(max(range(llm.n_vocab()), key=lambda j: row[j]))
        seq.append(nxt)
        llm.eval([nxt])
    ours = subprocess.run([bin_path, "generate", "--model", path, "--tokens", ",".join(map(str, prompt)),
                           "--max-tokens", "8", "--temperature", "0", "--ignore-eos", "--json"],
                          check=True, capture_output=True, text=True)
    mine = json.loads(ours.stdout)["tokens"]
    print(f"3B: llama.cpp loaded in {load:.2f}s, greedy {seq}")
    print(f"3B: smollm3-bot greedy          {mine}")
    print("3B: identical" if mine == seq else "3B: DIFFERENT")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "debug", "smollm3-bot"))
    ap.add_argument("--check-3b", metavar="FILE")
    ap.add_argument("--no-cases", action="store_true", help="skip the tiny cases")
    a = ap.parse_args()
    os.makedirs(FIXTURES, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for preset, quant, seed in [] if a.no_cases else CASES:
            case(a.bin, preset, quant, seed, tmp)
    if a.check_3b:
        check_3b(a.bin, a.check_3b)


if __name__ == "__main__":
    sys.exit(main())
