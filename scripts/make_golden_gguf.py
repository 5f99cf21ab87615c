#!/usr/bin/env python3
"""Reference outputs for faascale's GGUF loader, recorded from Hugging Face transformers loading
the same GGUF files (`from_pretrained(dir, gguf_file=...)`, float32, eager attention, CPU).

NOT run by CI. Run by hand when the fixtures need regenerating, and commit what it writes to
pipeline/tests/fixtures/smollm2-gguf/ (the directory is recreated, so the script is idempotent;
the tiny files are made from fixed seeds):

  golden.json     SmolLM2-135M-Instruct, GGUF Q4_1 (models/, see scripts/fetch_smollm2.sh):
                  - tokenizer: ids (add_special_tokens=False) and decoded text (special tokens
                    skipped) of prompts covering ASCII, punctuation, digits, accents, CJK, emoji,
                    whitespace runs, code, special-token text, the empty string, and the chat
                    template rendered for "What is the capital of France?" with the generation
                    prompt;
                  - for 2 prompts (that chat prompt and a plain sentence): a 32-token greedy
                    continuation (plain full-recompute loop, float32, not stopping at EOS), the
                    top-20 (id, logit) pairs and the L2 norm of the full logits row at the last
                    prompt position (prefill) and at the loop's last step (decode), and each
                    step's top-1/top-2 margin;
                  - a few dequantized weight values (Q/K after the un-permutation, the Q8_0
                    embedding, a Q4_1 matrix) to compare bit for bit.
  tiny-spm.gguf   a tiny random llama (2 layers, GQA 4/2, head_dim 16, untied F16 head) whose
                  tensors use every supported type (F32, F16, BF16, Q8_0, Q4_0, Q4_1), with Q/K
                  permuted as llama.cpp's converter does, data alignment 64, and a
                  sentencepiece-style ("llama") vocabulary with byte fallback, scores and no
                  merges (so transformers derives them), a USER_DEFINED and a CONTROL token;
  tiny-spm.json   its references: tokenizer examples, the derived merges, the backend
                  tokenizer's structure, full prefill logits and 16-token greedy continuations;
  tiny-bpe.gguf   a tokenizer-only file (and a zero embedding): byte-level BPE ("gpt2") with
                  merges, pre-tokenizer "llama-bpe" (Llama 3's split regex), CONTROL tokens (one
                  spelled outside the byte alphabet), a USER_DEFINED token;
  tiny-bpe.json   its tokenizer examples and backend structure.

How to run (the same virtual environment as scripts/make_golden.py, plus the `gguf` and
`accelerate` packages pinned in scripts/requirements-golden.txt):

    bash scripts/fetch_smollm2.sh
    /tmp/venv-golden/bin/pip install -r scripts/requirements-golden.txt
    /tmp/venv-golden/bin/python scripts/make_golden_gguf.py

What transformers does here that one might not expect (recorded as it is):
  - SmolLM2's `tokenizer.ggml.pre` is "smollm", which transformers does not map, so the
    pre-tokenizer is GPT-2's byte-level regex, not SmolLM2's own tokenizer.json (which splits
    digits individually first). The merges have no multi-digit tokens, so digits still come out
    one per token.
  - transformers dequantizes in float32 with gguf-py's formulas and reverses llama.cpp's Q/K
    row permutation; for a sentencepiece vocabulary it ignores `add_space_prefix` and always
    prepends "▁" to the first word.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import shutil
import sys
from pathlib import Path

import gguf
import numpy as np
import tokenizers
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "pipeline" / "tests" / "fixtures" / "smollm2-gguf"
MODEL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

SMOL_TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "Wait... what?! (yes); [no] {maybe} -- \"quoted\" 'single' `code` @#$%^&*_+=|\\/<>~",
    "In 2024, 3.14159 x 1,000,000 = 3141590; call 555-0123 at 10:45pm.",
    "Café crème brûlée, naïve façade, Ångström, Łódź, São Paulo.",
    "北京欢迎你。東京は日本の首都です。서울은 한국의 수도입니다.",
    "I ❤️ 🦀 and 👨‍👩‍👧‍👦! 🎉🎉 👍🏽",
    "  leading spaces\tand\ttabs\n\nnew lines   trailing   ",
    "def f(x):\n    return x ** 2  # square\n",
    "<|im_start|>user\nHi there<|im_end|>\n",
    "",
]
CHAT_QUESTION = "What is the capital of France?"
PLAIN_PROMPT = "The history of the printing press begins"
GREEDY_TOKENS = 32
TOP_K = 20

TINY_TEXTS = [
    "Hello world",
    " Hello  world",
    "The quick brown fox jumps over the lazy dog.",
    "café naïve 北京 😀",
    "a\tb\nc  d   ",
    "<tool>x<|eot|></s> <s>y",
    "Numbers 123 4567.",
    "",
]
TRAIN_TEXT = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "Hello world, hello there! Numbers 123 4567.",
    "café naïve résumé",
    "def f(x):\n    return x * 2\n",
    "It's the user's turn; they'll say what we've done.",
] * 5


# --------------------------------------------------------------------------- JSON


class F32:
    """float32 values written as the shortest decimals that round-trip."""

    def __init__(self, values):
        if isinstance(values, torch.Tensor):
            values = values.detach().cpu().float().numpy()
        self.a = np.asarray(values, dtype=np.float32).reshape(-1)
        assert np.all(np.isfinite(self.a))


def _f32(x) -> str:
    return np.format_float_positional(np.float32(x), unique=True, trim="0")


def dump(obj, indent: int = 0) -> str:
    pad, pad1 = "  " * indent, "  " * (indent + 1)
    if isinstance(obj, F32):
        return "[" + ", ".join(_f32(x) for x in obj.a) + "]"
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        return "{\n" + ",\n".join(f"{pad1}{json.dumps(k)}: {dump(v, indent + 1)}" for k, v in obj.items()) + "\n" + pad + "}"
    if isinstance(obj, (list, tuple)):
        if all(isinstance(x, (int, float, str, bool)) or x is None for x in obj):
            return json.dumps(list(obj), ensure_ascii=False)
        return "[\n" + ",\n".join(pad1 + dump(x, indent + 1) for x in obj) + "\n" + pad + "]"
    if isinstance(obj, float):
        assert math.isfinite(obj)
        return repr(obj)
    return json.dumps(obj, ensure_ascii=False)


def write_json(path: Path, obj) -> None:
    text = dump(obj) + "\n"
    json.loads(text)  # well-formed
    path.write_text(text, encoding="utf-8")


def versions() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "gguf": getattr(gguf, "__version__", None) or _dist_version("gguf"),
        "numpy": np.__version__,
    }


def _dist_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def sha256(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- transformers


def load(directory: Path, name: str):
    tok = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(
        directory, gguf_file=name, dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    return tok, model


def backend_structure(tok) -> dict:
    """The backend tokenizer's JSON without the vocabulary and merges (compared by the tests)."""
    j = json.loads(tok.backend_tokenizer.to_str())
    model = dict(j["model"])
    model["vocab"] = len(model["vocab"])
    model["merges"] = len(model["merges"])
    return {
        "normalizer": j["normalizer"],
        "pre_tokenizer": j["pre_tokenizer"],
        "post_processor": j["post_processor"],
        "decoder": j["decoder"],
        "model": model,
        "added_tokens": j["added_tokens"],
    }


def encode_examples(tok, texts) -> list[dict]:
    out = []
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        out.append(
            {
                "text": text,
                "ids": ids,
                "tokens": tok.convert_ids_to_tokens(ids),
                "decoded_skip_special_tokens": tok.decode(ids, skip_special_tokens=True),
            }
        )
    return out


def logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids], dtype=torch.long), use_cache=False).logits[0]


def margin(row: torch.Tensor) -> float:
    t = torch.topk(row.double(), 2).values
    return float(t[0] - t[1])


def top(row: torch.Tensor, k: int) -> dict:
    v, i = torch.topk(row, k)
    return {"ids": [int(x) for x in i], "logits": F32(v), "l2_norm": float(torch.linalg.norm(row.double()))}


def greedy(model, prompt: list[int], n: int, full_rows: bool) -> dict:
    """Plain loop, full recompute each step, argmax, no EOS stop."""
    ids = list(prompt)
    new, margins = [], []
    prefill = last = None
    for step in range(n):
        all_rows = logits(model, ids)
        last = all_rows[-1]
        if step == 0:
            prefill = all_rows
        nxt = int(torch.argmax(last))
        margins.append(margin(last))
        new.append(nxt)
        ids.append(nxt)
    out = {"prompt_ids": prompt, "new_tokens": new, "step_margins": margins, "final_step_input_len": len(ids) - 1}
    if full_rows:
        out["prefill_logits"] = [F32(r) for r in prefill]
        out["final_step_logits"] = F32(last)
    else:
        out["prefill_last_top"] = top(prefill[-1], TOP_K)
        out["final_step_top"] = top(last, TOP_K)
    return out


def weight_samples(model, names_rows) -> list[dict]:
    sd = model.state_dict()
    out = []
    for name, rows, cols in names_rows:
        w = sd[name]
        for r in rows:
            values = w[:cols] if r is None else w[r, :cols]  # row None: a 1-D tensor
            out.append({"tensor": name, "row": r, "cols": [0, cols], "values": F32(values)})
    return out


# --------------------------------------------------------------------------- SmolLM2


def smollm2() -> None:
    if not MODEL.exists():
        sys.exit(f"{MODEL} is missing: run scripts/fetch_smollm2.sh first")
    assert sha256(MODEL) == MODEL_SHA256, "unexpected SmolLM2 GGUF"
    tok, model = load(MODEL.parent, MODEL.name)
    chat = tok.apply_chat_template([{"role": "user", "content": CHAT_QUESTION}], tokenize=False, add_generation_prompt=True)
    examples = encode_examples(tok, SMOL_TEXTS + [chat])
    examples[-1]["chat_template_rendered"] = True
    chat_ids = examples[-1]["ids"]
    plain_ids = tok(PLAIN_PROMPT, add_special_tokens=False)["input_ids"]
    cases = []
    for name, text, ids in [("chat", chat, chat_ids), ("plain", PLAIN_PROMPT, plain_ids)]:
        g = greedy(model, ids, GREEDY_TOKENS, full_rows=False)
        g = {"name": name, "text": text, **g, "new_text": tok.decode(g["new_tokens"], skip_special_tokens=False)}
        cases.append(g)
        print(f"{name}: {g['new_text']!r} (min margin {min(g['step_margins']):.4f})")
    cfg = model.config
    golden = {
        "about": "scripts/make_golden_gguf.py: transformers loading models/SmolLM2-135M-Instruct.Q4_1.gguf, float32, eager, CPU",
        "versions": versions(),
        "gguf_sha256": MODEL_SHA256,
        "config": {
            "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.hidden_size,
            "intermediate_size": cfg.intermediate_size,
            "num_hidden_layers": cfg.num_hidden_layers,
            "num_attention_heads": cfg.num_attention_heads,
            "num_key_value_heads": cfg.num_key_value_heads,
            "head_dim": cfg.head_dim,
            "rms_norm_eps": float(cfg.rms_norm_eps),
            "rope_theta": float(cfg.rope_parameters["rope_theta"]),
            "max_position_embeddings": cfg.max_position_embeddings,
            "tie_word_embeddings": bool(cfg.tie_word_embeddings),
            "bos_token_id": cfg.bos_token_id,
            "eos_token_id": cfg.eos_token_id,
        },
        "special_tokens": {
            "bos": tok.bos_token,
            "eos": tok.eos_token,
            "unk": tok.unk_token,
            "pad": tok.pad_token,
        },
        "chat_template": tok.chat_template,
        "tokenizer_structure": backend_structure(tok),
        "tokenizer": {"encode_examples": examples},
        "greedy": cases,
        "weights": weight_samples(
            model,
            [
                ("model.layers.0.self_attn.q_proj.weight", [0, 1, 31, 32, 33, 64, 575], 8),
                ("model.layers.0.self_attn.k_proj.weight", [0, 1, 32, 63, 191], 8),
                ("model.layers.29.self_attn.k_proj.weight", [5, 40], 8),
                ("model.layers.0.mlp.down_proj.weight", [0, 575], 8),
                ("model.embed_tokens.weight", [0, 1000, 49151], 8),
                ("model.norm.weight", [None], 8),
            ],
        ),
    }
    write_json(OUT / "golden.json", golden)


# --------------------------------------------------------------------------- tiny files


def train_spm_pieces() -> list[str]:
    from tokenizers import SentencePieceBPETokenizer

    t = SentencePieceBPETokenizer()
    t.train_from_iterator(TRAIN_TEXT, vocab_size=200, min_frequency=1, show_progress=False, special_tokens=[])
    v = t.get_vocab()
    return sorted(v, key=v.get)


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py `LlamaModel.permute`."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def add_tensor(w: gguf.GGUFWriter, name: str, data: np.ndarray, qtype: gguf.GGMLQuantizationType) -> None:
    data = data.astype(np.float32)
    if qtype == gguf.GGMLQuantizationType.F32:
        w.add_tensor(name, data)
    elif qtype == gguf.GGMLQuantizationType.F16:
        w.add_tensor(name, data.astype(np.float16))
    else:
        w.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)


def tiny_spm() -> None:
    Q = gguf.GGMLQuantizationType
    pieces = train_spm_pieces()
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces + ["<tool>", "<|eot|>"]
    types = [2, 3, 3] + [6] * 256 + [1] * len(pieces) + [4, 3]
    scores = [0.0] * 259 + [-float(i) for i in range(len(pieces))] + [0.0, 0.0]
    vocab, d, ffn, n_head, n_kv, layers = len(tokens), 64, 96, 4, 2, 2
    hd = d // n_head
    rng = np.random.default_rng(20240611)
    std = 0.08
    name = "tiny-spm.gguf"
    w = gguf.GGUFWriter(str(OUT / name), "llama")
    w.add_custom_alignment(64)
    w.add_name("faascale tiny-spm")
    w.add_block_count(layers)
    w.add_context_length(128)
    w.add_embedding_length(d)
    w.add_feed_forward_length(ffn)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(hd)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_scores(scores)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_chat_template("{% for m in messages %}<s>{{ m['content'] }}</s>{% endfor %}")
    add_tensor(w, "token_embd.weight", rng.normal(0, 1.0, (vocab, d)), Q.Q8_0)
    layer_types = [
        dict(q=Q.Q4_0, k=Q.Q4_1, v=Q.F16, o=Q.BF16, gate=Q.Q8_0, up=Q.Q4_0, down=Q.Q4_1),
        dict(q=Q.Q8_0, k=Q.Q4_0, v=Q.Q4_1, o=Q.F32, gate=Q.BF16, up=Q.F16, down=Q.Q8_0),
    ]
    for i, t in enumerate(layer_types):
        p = f"blk.{i}"
        add_tensor(w, f"{p}.attn_norm.weight", 1.0 + 0.1 * rng.normal(0, 1, d), Q.F32)
        add_tensor(w, f"{p}.attn_q.weight", permute_qk(rng.normal(0, std * 3, (d, d)), n_head), t["q"])
        add_tensor(w, f"{p}.attn_k.weight", permute_qk(rng.normal(0, std * 3, (n_kv * hd, d)), n_kv), t["k"])
        add_tensor(w, f"{p}.attn_v.weight", rng.normal(0, std * 2, (n_kv * hd, d)), t["v"])
        add_tensor(w, f"{p}.attn_output.weight", rng.normal(0, std * 2, (d, d)), t["o"])
        add_tensor(w, f"{p}.ffn_norm.weight", 1.0 + 0.1 * rng.normal(0, 1, d), Q.F32)
        add_tensor(w, f"{p}.ffn_gate.weight", rng.normal(0, std * 2, (ffn, d)), t["gate"])
        add_tensor(w, f"{p}.ffn_up.weight", rng.normal(0, std * 2, (ffn, d)), t["up"])
        add_tensor(w, f"{p}.ffn_down.weight", rng.normal(0, std * 2, (d, ffn)), t["down"])
    add_tensor(w, "output_norm.weight", 1.0 + 0.1 * rng.normal(0, 1, d), Q.F32)
    add_tensor(w, "output.weight", rng.normal(0, 0.5, (vocab, d)), Q.F16)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    tok, model = load(OUT, name)
    j = json.loads(tok.backend_tokenizer.to_str())
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in ["The quick brown fox", "café 123 <tool>"]]
    cases = [greedy(model, ids, 16, full_rows=True) for ids in prompts]
    for c in cases:
        print(f"tiny-spm: {c['new_tokens']} (min margin {min(c['step_margins']):.4f})")
    write_json(
        OUT / "tiny-spm.json",
        {
            "about": f"scripts/make_golden_gguf.py: transformers loading {name}, float32, eager, CPU",
            "versions": versions(),
            "gguf_sha256": sha256(OUT / name),
            "tokenizer_structure": backend_structure(tok),
            "merges": [list(m) for m in j["model"]["merges"]],
            "tokenizer": {"encode_examples": encode_examples(tok, TINY_TEXTS)},
            "cases": cases,
            "weights": weight_samples(
                model,
                [
                    ("model.layers.0.self_attn.q_proj.weight", [0, 1, 8, 9, 63], 64),
                    ("model.layers.0.self_attn.k_proj.weight", [0, 7, 8, 31], 64),
                    ("model.layers.1.self_attn.k_proj.weight", [0, 15], 64),
                    ("model.layers.0.self_attn.o_proj.weight", [3], 64),
                    ("model.layers.1.mlp.gate_proj.weight", [3], 64),
                    ("model.layers.0.mlp.down_proj.weight", [3], 96),
                    ("lm_head.weight", [5], 64),
                    ("model.embed_tokens.weight", [300], 64),
                ],
            ),
        },
    )


def tiny_bpe() -> None:
    from tokenizers import ByteLevelBPETokenizer

    t = ByteLevelBPETokenizer()
    t.train_from_iterator(TRAIN_TEXT, vocab_size=400, min_frequency=1, show_progress=False, special_tokens=[])
    tj = json.loads(t.to_str())
    v = tj["model"]["vocab"]
    learned = sorted(v, key=v.get)
    merges = [" ".join(m) if isinstance(m, list) else m for m in tj["model"]["merges"]]
    extra = ["<|begin_of_text|>", "<|eot_id|>", "<|im start|>", "<think>"]
    tokens = learned + extra
    types = [1] * len(learned) + [3, 3, 3, 4]
    name = "tiny-bpe.gguf"
    w = gguf.GGUFWriter(str(OUT / name), "llama")
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(32)
    w.add_feed_forward_length(64)
    w.add_head_count(2)
    w.add_head_count_kv(1)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(len(learned))
    w.add_eos_token_id(len(learned) + 1)
    w.add_tensor("token_embd.weight", np.zeros((len(tokens), 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tok = AutoTokenizer.from_pretrained(OUT, gguf_file=name)
    texts = [
        "Hello world",
        "It's the user's turn; they'll say 12345 things.",
        "  spaces   and\ttabs\n\n",
        "café 北京 😀",
        "<|begin_of_text|>hi<|eot_id|> <think>x</think> <|im start|>",
        "",
    ]
    write_json(
        OUT / "tiny-bpe.json",
        {
            "about": f"scripts/make_golden_gguf.py: transformers AutoTokenizer from {name}",
            "versions": versions(),
            "gguf_sha256": sha256(OUT / name),
            "tokenizer_structure": backend_structure(tok),
            "tokenizer": {"encode_examples": encode_examples(tok, texts)},
        },
    )


def main() -> None:
    torch.manual_seed(0)
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    tiny_spm()
    tiny_bpe()
    smollm2()
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
