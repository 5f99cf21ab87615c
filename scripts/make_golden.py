#!/usr/bin/env python3
"""Generate golden test fixtures for faascale from Hugging Face transformers.

NOT run by CI.  Run by hand, only when the fixtures need regenerating, and
commit what it writes.

What it writes (everything under pipeline/tests/fixtures/, each directory is
deleted and recreated, so the script is idempotent):

  tiny-llama/   LlamaForCausalLM, GQA (4 q heads / 2 kv heads, head_dim 16),
                8 layers, Llama-3 rope scaling ("llama3", factor 8), untied
                lm_head, weights in bf16, saved SHARDED (3 shards +
                model.safetensors.index.json).
                config.json, generation_config.json, model-0000N-of-0000M.safetensors,
                model.safetensors.index.json, tokenizer.json (adds
                <|begin_of_text|> when add_special_tokens=True),
                tokenizer_config.json, golden.json
  tiny-qwen2/   Qwen2ForCausalLM with non-zero q/k/v biases, tied embeddings,
                weights in f32, single model.safetensors.
                config.json, generation_config.json, model.safetensors,
                tokenizer.json (no special tokens added), tokenizer_config.json,
                golden.json

Each directory gets its own tiny byte-level BPE (trained here with the
`tokenizers` library on the inline TRAINING_TEXT; 380 learned tokens + 3
special tokens appended after them, vocab 383 = config vocab_size):
  tiny-llama: Llama-3 style -- Split regex with digits grouped 1-3, no
              normalizer, ByteLevel, TemplateProcessing that prepends
              <|begin_of_text|> when add_special_tokens=True;
              specials <|begin_of_text|> <|end_of_text|> <|eot_id|>.
  tiny-qwen2: Qwen2 style -- NFC normalizer, Split regex with single digits,
              ByteLevel, adds nothing; specials <|endoftext|> <|im_start|> <|im_end|>.
(transformers 5.x's Qwen2Tokenizer rebuilds the normalizer/pre-tokenizer
itself and ignores tokenizer.json's, so the tiny-qwen2 tokenizer.json is made
exactly like that one; --check confirms tokenizers and AutoTokenizer agree.)

golden.json holds: versions, the config summary, rope inverse frequencies,
tokenizer encode/decode examples, and for 3 prompts (lengths 1, 5, 11) the full
prefill logits [len][vocab] and a 16-token greedy continuation computed by a
plain full-recompute loop (no EOS stop), with the logits of the loop's final
step.  All reference numbers are computed with the checkpoint loaded back from
disk with dtype=torch.float32 (bf16 weights upcast exactly) and
attn_implementation="eager", on CPU.  Floats are written as the shortest
decimal that round-trips the float32 value.

Weights are random (fixed seeds) with larger-than-default std so logits are far
from uniform; for each model the seed is advanced until every greedy step's
top-1 vs top-2 logit margin is large (MIN_GREEDY_MARGIN and MIN_MARGIN_RATIO,
see below) and no continuation is degenerate (MIN_DISTINCT_NEW).

--check also verifies that the transformers-4.x spelling of config.json
(`rope_theta` top level + `rope_scaling`, `torch_dtype`) loads to the same
model (bit-identical logits), and that an incremental KV-cache greedy loop
gives the same tokens.

How to run (needs ~6 GB of disk for torch and its CUDA wheels from PyPI; a
GPU is not needed or used -- the PyPI torch wheel for Linux pulls the CUDA
libraries as dependencies even though we only run on CPU):

    python3 -m venv /tmp/venv-golden
    /tmp/venv-golden/bin/pip install -r scripts/requirements-golden.txt
    /tmp/venv-golden/bin/python scripts/make_golden.py          # regenerate
    /tmp/venv-golden/bin/python scripts/make_golden.py --check  # only verify

i.e. `python3 scripts/make_golden.py` with a python that has the packages of
scripts/requirements-golden.txt.  `--check` writes nothing: it reloads the
committed fixtures with transformers (and AutoTokenizer) and verifies that they
reproduce golden.json (logits, greedy tokens, tokenizer examples), also
cross-checking greedy tokens against an incremental KV-cache loop.
Keep the virtual environment outside the repository (e.g. /tmp).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import shutil
import sys
import tempfile
from pathlib import Path

try:
    import numpy as np
    import safetensors
    import tokenizers
    import torch
    import transformers
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
except ImportError as e:  # pragma: no cover
    sys.exit(
        f"make_golden.py: missing dependency ({e}).\n"
        "Install with: python3 -m venv /tmp/venv-golden && "
        "/tmp/venv-golden/bin/pip install -r scripts/requirements-golden.txt\n"
        "then run: /tmp/venv-golden/bin/python scripts/make_golden.py"
    )

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "pipeline" / "tests" / "fixtures"

MAX_NEW_TOKENS = 16
LOGITS_TOLERANCE = 1e-4  # normalised error ||ours-ref||/||ref|| the Rust tests use
# Seed acceptance, for every greedy step of every prompt:
#  * top-1 minus top-2 logit >= MIN_GREEDY_MARGIN, and
#  * margin >= MIN_MARGIN_RATIO * sqrt(2) * LOGITS_TOLERANCE * ||logits row||: an
#    engine whose logits are within the tolerance can then never pick another
#    token (a perturbation e changes a margin by at most sqrt(2)*||e||);
#  * at least MIN_DISTINCT_NEW distinct tokens per 16-token continuation (no
#    degenerate "same token forever" continuations).
MIN_GREEDY_MARGIN = 1e-2
MIN_MARGIN_RATIO = 2.0
MIN_DISTINCT_NEW = 4
TOKENIZER_SEED_VOCAB = 380  # BPE vocab (256 byte symbols + merges); specials appended after

# Pre-tokenizer regexes of the real models: Llama-3 groups digits in runs of up
# to 3, Qwen2 splits every digit.
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Per-model tokenizer flavour.  Note: transformers 5.x's AutoTokenizer, for a
# model_type "qwen2" directory, builds Qwen2Tokenizer, which IGNORES the
# tokenizer.json normalizer/pre-tokenizer and uses its own (NFC + QWEN2_PATTERN);
# so the tiny-qwen2 tokenizer.json is made exactly that way, and both the
# `tokenizers` library and AutoTokenizer give the same ids (checked by --check).
TOKENIZERS = {
    "tiny-llama": dict(
        pattern=LLAMA3_PATTERN,
        nfc=False,
        specials=["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"],
        bos="<|begin_of_text|>",
        eos=["<|end_of_text|>", "<|eot_id|>"],
        add_bos=True,  # TemplateProcessing adds bos when add_special_tokens=True (like Llama-3)
        tokenizer_config={
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": "<|begin_of_text|>",
            "eos_token": "<|end_of_text|>",
            "pad_token": None,
            "unk_token": None,
        },
    ),
    "tiny-qwen2": dict(
        pattern=QWEN2_PATTERN,
        nfc=True,
        specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        bos="<|endoftext|>",
        eos="<|im_end|>",
        add_bos=False,  # Qwen2 never adds special tokens
        tokenizer_config={
            "tokenizer_class": "Qwen2Tokenizer",
            "bos_token": None,
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
            "unk_token": None,
        },
    ),
}

TRAINING_TEXT = """\
The quick brown fox jumps over the lazy dog. The five boxing wizards jump quickly!
Pack my box with five dozen liquor jugs; how vexingly quick daft zebras jump.
In 1969, Apollo 11 landed on the Moon: Neil Armstrong said, "That's one small step for man."
On 2024-03-14 at 09:26:53 the temperature was 21.5 degrees (about 70.7 F), and 3.14159 is pi.
It's a truth universally acknowledged, that a single man in possession of a good fortune,
must be in want of a wife. However little known the feelings or views of such a man may be...
Call me Ishmael. Some years ago - never mind how long precisely - having little or no money
in my purse, and nothing particular to interest me on shore, I thought I would sail about.
We're testing tokenizers: they'll split words, numbers like 12345 and 6789, and punctuation?!
Prices: $4.99, $10, 100% off, #1 item, a+b=c, x*y/z, [brackets], {braces}, <angles> & more.
The engine loads the model, splits the layers into blocks, and streams tokens to the client.
Hello, world! Hello again, world. Goodbye, cruel world; hello, new world.
Once upon a time there was a little language model that wanted to predict the next token.
It read the text, counted the pairs, merged the most frequent ones, and then it read again.
She sells sea shells by the sea shore. Peter Piper picked a peck of pickled peppers.
How much wood would a woodchuck chuck if a woodchuck could chuck wood? 42, said the computer.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 20 30 40 50 60 70 80 90 100 1000 2048 4096 65536.
Email me at someone@example.com or visit the page at https://example.com/path?x=1&y=2.
Don't stop; won't stop; can't stop. I'm here, you're there, they've gone, we'd go.
Café, naïve, résumé, über, jalapeño -- a few words that are not plain ASCII at all.
"""

ENCODE_EXAMPLES = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "  leading and trailing spaces  ",
    "Numbers: 3.14159, 2024-03-14, 1234567890 and -42.",
    "It's what we'd do; they'll see, won't they?",
    "tabs\tand\nnew lines\r\nhere\n\n",
    "héllo wörld — 你好 🙂",
    "cafe\u0301 vs caf\u00e9",  # decomposed vs precomposed e-acute (NFC only for tiny-qwen2)
    "<|begin_of_text|>a<|end_of_text|> b <|endoftext|>c<|im_start|>d<|im_end|>",
]

# (name, text, prompt length in tokens).  Prompt ids are
# encode(text, add_special_tokens=True)[:length]: for tiny-llama that starts with
# <|begin_of_text|> (so "len1" is just [bos]), for tiny-qwen2 it does not.
PROMPTS = [
    ("len1", "Hello", 1),
    ("len5", "Once upon a time there was a model", 5),
    ("len11", "In 1969, Apollo 11 landed on the Moon: Neil Armstrong said, \"That's one small step.\"", 11),
]


# --------------------------------------------------------------------------- tokenizer


def train_tokenizer(spec: dict) -> Tokenizer:
    """Byte-level BPE trained on TRAINING_TEXT; the special tokens are appended
    after the TOKENIZER_SEED_VOCAB learned tokens (like Llama-3 / Qwen2)."""
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC() if spec["nfc"] else None
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(spec["pattern"]), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_SEED_VOCAB,
        min_frequency=2,
        show_progress=False,
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(TRAINING_TEXT.splitlines(keepends=True), trainer=trainer)
    base = tok.get_vocab_size(with_added_tokens=True)
    assert base == TOKENIZER_SEED_VOCAB, f"BPE vocab reached only {base}, need more training text"
    tok.add_special_tokens(spec["specials"])
    post = processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True)
    if spec["add_bos"]:
        bos = spec["bos"]
        tok.post_processor = processors.Sequence(
            [
                post,
                processors.TemplateProcessing(
                    single=f"{bos}:0 $A:0",
                    pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
                    special_tokens=[(bos, tok.token_to_id(bos))],
                ),
            ]
        )
    else:
        tok.post_processor = post
    return tok


def encode_examples(tok: Tokenizer) -> list[dict]:
    out = []
    for text in ENCODE_EXAMPLES:
        ids = tok.encode(text, add_special_tokens=False).ids
        ids_sp = tok.encode(text, add_special_tokens=True).ids
        decoded = tok.decode(ids, skip_special_tokens=False)
        out.append(
            {
                "text": text,
                "ids": ids,
                "ids_add_special_tokens": ids_sp,
                "tokens": [tok.id_to_token(i) for i in ids],
                "decoded": decoded,
                "decoded_skip_special_tokens": tok.decode(ids, skip_special_tokens=True),
            }
        )
    return out


# --------------------------------------------------------------------------- models


def llama_config(vocab: int, tok: Tokenizer, t: dict) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=112,
        num_hidden_layers=8,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        hidden_act="silu",
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 10000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=False,
        bos_token_id=tok.token_to_id(t["bos"]),
        eos_token_id=[tok.token_to_id(e) for e in t["eos"]],  # a list, like Llama-3.x
        pad_token_id=None,
        initializer_range=0.02,
    )


def qwen2_config(vocab: int, tok: Tokenizer, t: dict) -> Qwen2Config:
    return Qwen2Config(
        vocab_size=vocab,
        hidden_size=48,
        intermediate_size=72,
        num_hidden_layers=8,
        num_attention_heads=6,
        num_key_value_heads=2,
        hidden_act="silu",
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        use_sliding_window=False,
        tie_word_embeddings=True,
        bos_token_id=tok.token_to_id(t["bos"]),
        eos_token_id=tok.token_to_id(t["eos"]),  # a single number
        pad_token_id=None,
        initializer_range=0.02,
    )


SPECS = {
    "tiny-llama": dict(
        cls=LlamaForCausalLM,
        make_config=llama_config,
        save_dtype=torch.bfloat16,
        sharded_shards=3,
        base_seed=1000,
        std=0.15,
    ),
    "tiny-qwen2": dict(
        cls=Qwen2ForCausalLM,
        make_config=qwen2_config,
        save_dtype=torch.float32,
        sharded_shards=None,
        base_seed=2000,
        std=0.15,
    ),
}


def init_weights(model: torch.nn.Module, seed: int, std: float, save_dtype: torch.dtype) -> None:
    """Random weights, larger than default std, rounded to save_dtype (so the
    in-memory f32 model equals what the f32 reload of the checkpoint gives)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            shape = p.shape
            if name.endswith("norm.weight"):
                v = 1.0 + 0.1 * torch.randn(shape, generator=g, dtype=torch.float32)
            elif name.endswith(".bias"):
                v = 0.2 * torch.randn(shape, generator=g, dtype=torch.float32)
            else:
                v = std * torch.randn(shape, generator=g, dtype=torch.float32)
            p.copy_(v.to(save_dtype).to(torch.float32))


def forward_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids], dtype=torch.long), use_cache=False)
    return out.logits[0]


def top2_margin(row: torch.Tensor) -> float:
    t = torch.topk(row.double(), 2).values
    return float(t[0] - t[1])


def greedy(model, prompt: list[int], n: int) -> dict:
    ids = list(prompt)
    new, margins, maxlog, ratios = [], [], [], []
    last = None
    for _ in range(n):
        last = forward_logits(model, ids)[-1]
        nxt = int(torch.argmax(last))
        margins.append(top2_margin(last))
        ratios.append(margins[-1] / (math.sqrt(2) * LOGITS_TOLERANCE * float(torch.linalg.norm(last.double()))))
        maxlog.append(float(last[nxt]))
        new.append(nxt)
        ids.append(nxt)
    return {
        "new_tokens": new,
        "all_ids": ids,
        "step_margins": margins,
        "step_margin_ratios": ratios,
        "step_argmax_logit": maxlog,
        "final_step_input_len": len(ids) - 1,
        "final_step_logits": last,
    }


def kv_cache_greedy(model, prompt: list[int], n: int) -> dict:
    """Greedy decoding with transformers' KV cache: prefill once, then one token per step."""
    with torch.no_grad():
        out = model(input_ids=torch.tensor([prompt]), use_cache=True)
        new, last = [], out.logits[0, -1]
        for i in range(n):
            nxt = int(torch.argmax(last))
            new.append(nxt)
            if i + 1 < n:
                out = model(input_ids=torch.tensor([[nxt]]), past_key_values=out.past_key_values, use_cache=True)
                last = out.logits[0, -1]
    return {"new_tokens": new, "final_step_logits": last}


def prompt_ids(tok: Tokenizer) -> list[tuple[str, str, list[int]]]:
    out = []
    for name, text, n in PROMPTS:
        ids = tok.encode(text, add_special_tokens=True).ids
        assert len(ids) >= n, (name, len(ids))
        out.append((name, text, ids[:n]))
    return out


def norm_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


# --------------------------------------------------------------------------- JSON


class F32List:
    """A float32 vector written as shortest-round-trip decimals."""

    def __init__(self, t):
        self.a = np.asarray(t.detach().cpu().float().numpy() if isinstance(t, torch.Tensor) else t, dtype=np.float32)
        assert np.all(np.isfinite(self.a))


def _f32(x: np.float32) -> str:
    return np.format_float_positional(x, unique=True, trim="0")


def dump_json(obj, indent: int = 0) -> str:
    pad, pad1 = "  " * indent, "  " * (indent + 1)
    if isinstance(obj, F32List):
        return "[" + ", ".join(_f32(x) for x in obj.a) + "]"
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f"{pad1}{json.dumps(k)}: {dump_json(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, (list, tuple)):
        if all(isinstance(x, (int, float, str, bool)) or x is None for x in obj):
            return json.dumps(list(obj), ensure_ascii=False)
        return "[\n" + ",\n".join(pad1 + dump_json(x, indent + 1) for x in obj) + "\n" + pad + "]"
    if isinstance(obj, float):
        assert math.isfinite(obj)
        return repr(obj)
    return json.dumps(obj, ensure_ascii=False)


# --------------------------------------------------------------------------- generation


def versions() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
    }


def sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def load_f32(path: Path, dtype=torch.float32):
    m = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="eager")
    m.eval()
    return m


def config_summary(cfg) -> dict:
    keys = [
        "architectures", "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings",
        "rms_norm_eps", "rope_parameters", "tie_word_embeddings", "attention_bias", "bos_token_id", "eos_token_id",
    ]
    d = {}
    for k in keys:
        if hasattr(cfg, k):
            v = getattr(cfg, k)
            d[k] = dict(v) if isinstance(v, dict) else v
    if "head_dim" not in d or d["head_dim"] is None:
        d["head_dim"] = cfg.hidden_size // cfg.num_attention_heads
    return d


def rope_info(model) -> dict:
    rot = model.model.rotary_emb
    cfg = model.config
    base = cfg.rope_parameters["rope_theta"]
    dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    unscaled = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
    inv = rot.inv_freq.float()
    kind = []
    factor = cfg.rope_parameters.get("factor")
    for a, b in zip(inv.tolist(), unscaled.tolist()):
        if a == b:
            kind.append("unchanged")
        elif factor and math.isclose(a, b / factor, rel_tol=1e-6):
            kind.append("divided_by_factor")
        else:
            kind.append("smoothed")
    return {
        "inv_freq": F32List(inv),
        "inv_freq_unscaled": F32List(unscaled),
        "scaling_effect": kind,
        "attention_scaling": float(rot.attention_scaling),
    }


def build(name: str, spec: dict) -> dict:
    out_dir = FIXTURES / name
    tspec = TOKENIZERS[name]
    tok = train_tokenizer(tspec)
    vocab = tok.get_vocab_size(with_added_tokens=True)
    ids = {t: tok.token_to_id(t) for t in tspec["specials"]}
    cfg = spec["make_config"](vocab, tok, tspec)
    prompts = prompt_ids(tok)

    # Seed search in memory (weights already rounded to the save dtype).
    seed = spec["base_seed"]
    while True:
        torch.manual_seed(seed)
        model = spec["cls"](cfg).float().eval()
        init_weights(model, seed, spec["std"], spec["save_dtype"])
        model.config._attn_implementation = "eager"
        gs = [greedy(model, p, MAX_NEW_TOKENS) for _, _, p in prompts]
        margin = min(min(g["step_margins"]) for g in gs)
        ratio = min(min(g["step_margin_ratios"]) for g in gs)
        distinct = min(len(set(g["new_tokens"])) for g in gs)
        print(f"[{name}] seed {seed}: min greedy margin {margin:.5f}, min ratio {ratio:.2f}, min distinct {distinct}")
        if margin >= MIN_GREEDY_MARGIN and ratio >= MIN_MARGIN_RATIO and distinct >= MIN_DISTINCT_NEW:
            break
        seed += 1

    # Save.
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    model.config.architectures = [spec["cls"].__name__]
    save_model = model.to(spec["save_dtype"])
    if spec["sharded_shards"]:
        # save_pretrained packs shards greedily; pick the smallest max_shard_size
        # (from a fixed list of fractions of the total) that gives the wanted count.
        want = spec["sharded_shards"]
        total = sum(p.numel() * p.element_size() for p in save_model.state_dict().values())
        for frac in [1.0 / want * (1 + 0.05 * k) for k in range(20)]:
            for f in out_dir.iterdir():
                f.unlink()
            save_model.save_pretrained(out_dir, max_shard_size=int(total * frac), safe_serialization=True)
            n_shards = len(list(out_dir.glob("model-*.safetensors")))
            if n_shards == want:
                break
        assert n_shards == want, n_shards
        assert (out_dir / "model.safetensors.index.json").exists()
    else:
        save_model.save_pretrained(out_dir, safe_serialization=True)
        assert (out_dir / "model.safetensors").exists()
    del model, save_model
    tok.save(str(out_dir / "tokenizer.json"), pretty=True)
    tc = dict(tspec["tokenizer_config"])
    tc.update(
        {
            "model_max_length": cfg.max_position_embeddings,
            "clean_up_tokenization_spaces": False,
            "model_input_names": ["input_ids", "attention_mask"],
        }
    )
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tc, indent=2) + "\n")

    # Reference: reload from disk in f32, eager.
    ref = load_f32(out_dir)
    assert next(ref.parameters()).dtype == torch.float32
    ref64 = load_f32(out_dir, torch.float64)
    rope = rope_info(ref)
    if ref.config.rope_parameters["rope_type"] == "llama3":
        # The fixture must exercise all three branches of the llama3 scaling.
        assert set(rope["scaling_effect"]) == {"unchanged", "smoothed", "divided_by_factor"}, rope["scaling_effect"]
    cases, all_margins, all_ratios, f64_errs, f64_tokens_match = [], [], [], [], True
    for pname, text, p in prompts:
        pre = forward_logits(ref, p)
        g = greedy(ref, p, MAX_NEW_TOKENS)
        g64 = greedy(ref64, p, MAX_NEW_TOKENS)
        f64_errs.append(norm_err(pre, forward_logits(ref64, p)))
        f64_errs.append(norm_err(g["final_step_logits"], g64["final_step_logits"]))
        f64_tokens_match &= g["new_tokens"] == g64["new_tokens"]
        all_margins += g["step_margins"]
        all_ratios += g["step_margin_ratios"]
        cases.append(
            {
                "name": pname,
                "prompt_source_text": text,
                "prompt_ids": p,
                "prompt_decoded": tok.decode(p, skip_special_tokens=False),
                "prefill_logits": [F32List(r) for r in pre],
                "prefill_argmax": [int(x) for x in torch.argmax(pre, dim=-1)],
                "greedy": {
                    "max_new_tokens": MAX_NEW_TOKENS,
                    "new_tokens": g["new_tokens"],
                    "all_ids": g["all_ids"],
                    "decoded_new_tokens": tok.decode(g["new_tokens"], skip_special_tokens=False),
                    "step_margins": [round(m, 6) for m in g["step_margins"]],
                    "step_argmax_logit": F32List(g["step_argmax_logit"]),
                    "final_step_input_len": g["final_step_input_len"],
                    "final_step_logits": F32List(g["final_step_logits"]),
                },
            }
        )
    assert f64_tokens_match, "f32 and f64 greedy tokens differ"

    files = {}
    for f in sorted(out_dir.iterdir()):
        f.chmod(0o644)
        files[f.name] = {"bytes": f.stat().st_size, "sha256": sha256(f)}

    golden = {
        "format_version": 1,
        "generator": "scripts/make_golden.py",
        "model": name,
        "architecture": spec["cls"].__name__,
        "versions": versions(),
        "seed": seed,
        "init": {
            "linear_and_embedding_std": spec["std"],
            "norm_weight": "1 + 0.1*N(0,1)",
            "bias_std": 0.2,
        },
        "weights_dtype": str(spec["save_dtype"]).replace("torch.", ""),
        "reference": {
            "dtype": "float32",
            "attn_implementation": "eager",
            "device": "cpu",
            "greedy": "full recompute each step, argmax of last position, no EOS stop",
        },
        "tolerance": {"logits_normalised_error": LOGITS_TOLERANCE},
        "config": config_summary(ref.config),
        "num_parameters": sum(p.numel() for p in ref.parameters()),
        "rope": rope,
        "tokenizer": {
            "vocab_size": vocab,
            "special_tokens": ids,
            "bos_token": tspec["bos"],
            "eos_token": tspec["eos"],
            "normalizer": "NFC" if tspec["nfc"] else None,
            "pre_tokenizer_split_regex": tspec["pattern"],
            "add_special_tokens_adds_bos": tspec["add_bos"],
            "encode_examples": encode_examples(tok),
        },
        "min_greedy_margin": min(all_margins),
        "min_greedy_margin_ratio": min(all_ratios),
        "f64_check": {
            "max_normalised_error_f32_vs_f64": max(f64_errs),
            "greedy_tokens_match": f64_tokens_match,
        },
        "files": files,
        "cases": cases,
    }
    (out_dir / "golden.json").write_text(dump_json(golden) + "\n", encoding="utf-8")
    print(f"[{name}] wrote {out_dir} (seed {seed}, min margin {min(all_margins):.5f}, f32 vs f64 {max(f64_errs):.2e})")
    return golden


# --------------------------------------------------------------------------- check


def check(name: str) -> None:
    out_dir = FIXTURES / name
    golden = json.loads((out_dir / "golden.json").read_text(encoding="utf-8"))
    for fname, info in golden["files"].items():
        assert sha256(out_dir / fname) == info["sha256"], f"{name}/{fname} changed since golden.json was written"
    ref = load_f32(out_dir)
    cfg = ref.config
    if cfg.tie_word_embeddings:
        assert ref.lm_head.weight.data_ptr() == ref.model.embed_tokens.weight.data_ptr() or torch.equal(
            ref.lm_head.weight, ref.model.embed_tokens.weight
        )
    else:
        assert not torch.equal(ref.lm_head.weight, ref.model.embed_tokens.weight)
    tok = Tokenizer.from_file(str(out_dir / "tokenizer.json"))
    hf_tok = AutoTokenizer.from_pretrained(out_dir)
    for ex in golden["tokenizer"]["encode_examples"]:
        t = ex["text"]
        assert tok.encode(t, add_special_tokens=False).ids == ex["ids"], t
        assert tok.encode(t, add_special_tokens=True).ids == ex["ids_add_special_tokens"], t
        assert hf_tok(t, add_special_tokens=False)["input_ids"] == ex["ids"], t
        assert hf_tok(t, add_special_tokens=True)["input_ids"] == ex["ids_add_special_tokens"], t
        assert tok.decode(ex["ids"], skip_special_tokens=False) == ex["decoded"], t
        assert hf_tok.decode(ex["ids"], skip_special_tokens=False) == ex["decoded"], t
    worst, worst_greedy, worst_kv = 0.0, 0.0, 0.0
    for case in golden["cases"]:
        p = case["prompt_ids"]
        pre = forward_logits(ref, p)
        exp = torch.tensor(case["prefill_logits"], dtype=torch.float32)
        assert pre.shape == exp.shape
        worst = max(worst, norm_err(pre, exp))
        g = greedy(ref, p, MAX_NEW_TOKENS)
        assert g["new_tokens"] == case["greedy"]["new_tokens"], case["name"]
        worst_greedy = max(
            worst_greedy,
            norm_err(g["final_step_logits"], torch.tensor(case["greedy"]["final_step_logits"], dtype=torch.float32)),
        )
        # Cross-check with an incremental KV-cache greedy loop (decode path).
        kv = kv_cache_greedy(ref, p, MAX_NEW_TOKENS)
        assert kv["new_tokens"] == case["greedy"]["new_tokens"], (case["name"], kv["new_tokens"])
        worst_kv = max(worst_kv, norm_err(kv["final_step_logits"], g["final_step_logits"]))
    legacy = legacy_config_check(out_dir, golden)
    print(
        f"[{name}] check OK: legacy-format config.json gives identical logits ({legacy}), prefill err {worst:.2e}, final-step err {worst_greedy:.2e}, "
        f"KV-cache vs full-recompute final-step err {worst_kv:.2e}, greedy tokens equal"
    )
    assert worst < 1e-6 and worst_greedy < 1e-6 and worst_kv < LOGITS_TOLERANCE


def legacy_config_check(out_dir: Path, golden: dict) -> str:
    """transformers 4.x wrote `rope_theta` at top level, `rope_scaling` for the
    scaling dict and `torch_dtype`; 5.x writes `rope_parameters` and `dtype`.
    Check the old spelling of the same config loads to the very same model, so
    an engine test may rewrite config.json that way and reuse golden.json."""
    cfg = json.loads((out_dir / "config.json").read_text())
    rp = dict(cfg.pop("rope_parameters"))
    cfg["rope_theta"] = rp.pop("rope_theta")
    rtype = rp.get("rope_type", "default")
    cfg["rope_scaling"] = None if rtype == "default" else rp
    cfg["torch_dtype"] = cfg.pop("dtype")
    with tempfile.TemporaryDirectory() as td:
        for f in out_dir.iterdir():
            if f.name != "config.json":
                (Path(td) / f.name).symlink_to(f.resolve())
        (Path(td) / "config.json").write_text(json.dumps(cfg, indent=2))
        m = load_f32(Path(td))
        assert m.config.rope_parameters == golden["config"]["rope_parameters"], m.config.rope_parameters
        for case in golden["cases"]:
            got = forward_logits(m, case["prompt_ids"])
            assert torch.equal(got, torch.tensor(case["prefill_logits"], dtype=torch.float32)), case["name"]
    return f"rope_theta top-level + rope_scaling={json.dumps(cfg['rope_scaling'])}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only verify the committed fixtures")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    torch.use_deterministic_algorithms(True)
    if not args.check:
        for name, spec in SPECS.items():
            build(name, spec)
    for name in SPECS:
        check(name)


if __name__ == "__main__":
    main()
