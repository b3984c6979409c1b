#!/usr/bin/env python3
"""Writes the small random-weight language models of crates/kiln-llm's tests into the directory
given (default target/llm-models), as real GGUF files:

  llama-f32.gguf    Llama-shaped (RMSNorm, RoPE on adjacent pairs, grouped-query attention with
                    4 query heads over 2 key/value heads, SwiGLU), written by the `gguf` package
                    (llama.cpp's own writer), with a SentencePiece-style vocabulary of 3 control
                    tokens, 256 byte-fallback tokens and pieces drawn from a multilingual text
  qwen2-f32.gguf    the same shape as Qwen2: biases on q, k and v, RoPE on the two halves
  <arch>-<t>.gguf   each quantized by llama.cpp's own quantizer (llama_model_quantize, as
                    llama-quantize does) for t in f16, q8_0, q4_0, q4_k_m
  gpt2-<t>.gguf     GPT-2-shaped (LayerNorm, learned positions, fused q/k/v, GELU, tied output)
                    with the byte-level BPE vocabulary, in f32, f16 and q8_0 (and -deq)
  bpe-<pre>.gguf    a one-block model with a GPT-2-style byte-level BPE vocabulary trained by
                    the `tokenizers` package, pre-tokenized as GPT-2 (`gpt-2`) or Qwen2 (`qwen2`);
                    bpe-texts.json holds test texts and the ids `tokenizers` gives them
  hf-qwen2/         a Qwen2-shaped Hugging Face directory (config.json, bf16 weights in two
                    safetensors shards with an index, the BPE tokenizer.json) and reference.json:
                    the logits of an independent numpy forward (float64) for one text
  hf-spm-<form>/    a SentencePiece-style BPE tokenizer.json (Llama 2's kind: "▁" for spaces,
                    one put in front, byte fallback) trained by `tokenizers`, in the normalizer
                    form and the Metaspace pre-tokenizer form, with texts.json: the ids and
                    decoded texts `tokenizers` gives the test texts
  chat-<name>.gguf  a one-block model carrying a chat template (ChatML, Llama 3, Llama 2, TinyLlama's,
                    and the name `zephyr`) and those templates' special tokens
  <arch>-<t>-deq.gguf   the same weights decoded to f32 by gguf.quants.dequantize: llama.cpp on
                    these is the exact arithmetic of the quantized weights (its CPU products
                    quantize activations to 8 bits, which a GPU's kernels do not)

With --bench (scripts/bench_llm.sh), it writes instead a model of SmolLM-135M's shape (width 576,
30 layers, 9 query and 3 key/value heads, feed-forward 1536, vocabulary 49152; random weights)
in f32, f16, q8_0 and q4_0: smollm-135m-<t>.gguf. With --tinyllama, one of TinyLlama-1.1B's
shape (width 2048, 22 layers, 32 query and 4 key/value heads, feed-forward 5632, vocabulary
32000) in f16 and q4_0: tinyllama-1.1b-<t>.gguf.

The second argument is the llama-peer binary (benches/peers/ggml/build.sh) that quantizes.
Every dimension is a multiple of 256, so llama.cpp keeps the K-quant types it picks.
"""
import collections
import os
import subprocess
import sys

import json

import numpy as np
import gguf

BENCH = "--bench" in sys.argv
TINY = "--tinyllama" in sys.argv
args = [a for a in sys.argv[1:] if a not in ("--bench", "--tinyllama")]
out = args[0] if len(args) > 0 else os.path.join("target", "llm-models")
peer = args[1] if len(args) > 1 else "benches/peers/ggml/build/llama-peer"
os.makedirs(out, exist_ok=True)

# The text the vocabulary is drawn from, and the tests tokenize: several scripts, digits,
# punctuation and code, so merges, unknown characters and byte fallback all happen.
CORPUS = """The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs.
Le renard brun rapide saute par-dessus le chien paresseux. Où est la bibliothèque ?
Der schnelle braune Fuchs springt über den faulen Hund. Größe, Straße, Übung.
Быстрая коричневая лиса прыгает через ленивую собаку. Привет, мир!
Η γρήγορη καφέ αλεπού πηδά πάνω από τον τεμπέλη σκύλο.
敏捷的棕色狐狸跳过了懒狗。你好，世界！
素早い茶色の狐がのろまな犬を飛び越える。こんにちは世界。
الثعلب البني السريع يقفز فوق الكلب الكسول.
def main(): return [x * 2 for x in range(10)]  # 12345 + 67890 = 80235
"""

rng = np.random.default_rng(20261206)


def vocabulary():
    """SentencePiece-style pieces: control tokens, 256 bytes, then every character of the
    corpus and its frequent substrings (spaces as U+2581), scored by frequency."""
    text = CORPUS.replace(" ", "\u2581").replace("\n", "\u2581")
    words = ["\u2581" + w for w in CORPUS.split()]
    counts = collections.Counter()
    for w in words:
        w = w.replace(" ", "\u2581")
        for n in range(2, 7):
            for i in range(len(w) - n + 1):
                counts[w[i:i + n]] += 1
    chars = sorted(set(text) - set("🙂"))
    pieces = [p for p, c in counts.most_common() if c >= 2][:400]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    scores = [0.0, 0.0, 0.0] + [0.0] * 256
    seen = set(tokens)
    for i, p in enumerate(pieces):
        if p not in seen:
            tokens.append(p); types.append(1); scores.append(-float(i)); seen.add(p)
    for c in chars:
        if c not in seen:
            tokens.append(c); types.append(1); scores.append(-1000.0); seen.add(c)
    # Some characters of the corpus are left out on purpose (byte fallback): the last CJK ones.
    drop = set("界懒")
    keep = [i for i, t in enumerate(tokens) if t not in drop]
    return [tokens[i] for i in keep], [scores[i] for i in keep], [types[i] for i in keep]


TOKENS, SCORES, TYPES = vocabulary()
DIM, LAYERS, HEADS, KV_HEADS, FF = 256, 2, 4, 2, 512
if BENCH or TINY:
    DIM, LAYERS, HEADS, KV_HEADS, FF = (576, 30, 9, 3, 1536) if BENCH else (2048, 22, 32, 4, 5632)
    extra = (49152 if BENCH else 32000) - len(TOKENS)
    TOKENS += [f"\u2581w{i}" for i in range(extra)]
    SCORES += [-2000.0 - i for i in range(extra)]
    TYPES += [1] * extra
VOCAB = len(TOKENS)
HEAD = DIM // HEADS


# The TinyLlama shape is written in f16 (2.2 GB rather than 4.4) and quantized from there.
FLOAT = np.float16 if TINY else np.float32


def weight(rows, cols):
    return (rng.standard_normal((rows, cols), dtype=np.float32) / np.float32(np.sqrt(cols))).astype(FLOAT)


def write(arch, bias, name=None, types=("f16", "q8_0", "q4_0", "q4_k_m"), exact=True):
    name = name or arch
    path = os.path.join(out, f"{name}-{'f16' if TINY else 'f32'}.gguf")
    w = gguf.GGUFWriter(path, arch)
    w.add_context_length(2048 if BENCH else 512)
    w.add_embedding_length(DIM)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FF)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(HEAD)
    w.add_file_type(1 if TINY else 0)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(TOKENS)
    w.add_token_scores(SCORES)
    w.add_token_types(TYPES)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_tensor("token_embd.weight", rng.standard_normal((VOCAB, DIM), dtype=np.float32).astype(FLOAT))
    for i in range(LAYERS):
        b = f"blk.{i}."
        w.add_tensor(b + "attn_norm.weight", (1 + 0.1 * rng.standard_normal(DIM)).astype(np.float32))
        w.add_tensor(b + "attn_q.weight", weight(DIM, DIM))
        w.add_tensor(b + "attn_k.weight", weight(KV_HEADS * HEAD, DIM))
        w.add_tensor(b + "attn_v.weight", weight(KV_HEADS * HEAD, DIM))
        if bias:
            for n, rows in (("q", DIM), ("k", KV_HEADS * HEAD), ("v", KV_HEADS * HEAD)):
                w.add_tensor(b + f"attn_{n}.bias", (0.1 * rng.standard_normal(rows)).astype(np.float32))
        w.add_tensor(b + "attn_output.weight", weight(DIM, DIM))
        w.add_tensor(b + "ffn_norm.weight", (1 + 0.1 * rng.standard_normal(DIM)).astype(np.float32))
        w.add_tensor(b + "ffn_gate.weight", weight(FF, DIM))
        w.add_tensor(b + "ffn_up.weight", weight(FF, DIM))
        w.add_tensor(b + "ffn_down.weight", weight(DIM, FF))
    w.add_tensor("output_norm.weight", (1 + 0.1 * rng.standard_normal(DIM)).astype(np.float32))
    w.add_tensor("output.weight", weight(VOCAB, DIM))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    for t in types:
        q = os.path.join(out, f"{name}-{t}.gguf")
        subprocess.run([peer, "quantize", path, q, t], check=True, stderr=subprocess.DEVNULL)
        if exact:
            dequantize(q, os.path.join(out, f"{name}-{t}-deq.gguf"))


def dequantize(src, dst):
    """A copy of a GGUF file with every tensor decoded to f32."""
    r = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(dst, r.fields["general.architecture"].contents())
    for key, field in r.fields.items():
        if key.startswith("GGUF.") or key in ("general.architecture", "general.file_type"):
            continue
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(key, field.contents(), kind, sub_type=sub)
    for t in r.tensors:
        values = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        w.add_tensor(t.name, values.reshape([int(d) for d in reversed(t.shape)]))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if TINY:
    write("llama", bias=False, name="tinyllama-1.1b", types=("q4_0",), exact=False)
    print(f"wrote {out}: tinyllama-1.1b (f16, q4_0)")
    sys.exit(0)
if BENCH:
    write("llama", bias=False, name="smollm-135m", types=("f16", "q8_0", "q4_0"), exact=False)
    print(f"wrote {out}: smollm-135m (f32, f16, q8_0, q4_0)")
    sys.exit(0)
# Byte-level BPE (GPT-2 style): one vocabulary and merge list trained by the `tokenizers`
# package on the corpus, written as two GGUF files whose pre-tokenizers differ (GPT-2's regex and
# Qwen2's), and the ids `tokenizers` itself gives for the test texts (bpe-texts.json).
QWEN2_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
            r"|\s*[\r\n]+|\s+(?!\S)|\s+")
BPE_TEXTS = CORPUS.splitlines() + [
    CORPUS,
    "  two  spaces and trailing   ",
    "tabs\t\tand\n\nnewlines\r\n",
    "digits 1234567 and 3.14159, contractions: don't I'll WE'RE she's",
    "emoji 🙂🎉 and 界 and 懒 and é",
    "x",
]


def write_bpe():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    def tokenizer(pre):
        t = Tokenizer(models.BPE())
        if pre == "gpt-2":
            t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        else:
            t.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Split(Regex(QWEN2_RE), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ])
        t.decoder = decoders.ByteLevel()
        return t

    base = tokenizer("gpt-2")
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    base.train_from_iterator([CORPUS] * 20, trainer)
    spec = json.loads(base.to_str())["model"]
    vocab = spec["vocab"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["merges"]]
    tokens = [None] * len(vocab)
    for piece, i in vocab.items():
        tokens[i] = piece
    eot = vocab["<|endoftext|>"]
    types = [3 if i == eot else 1 for i in range(len(tokens))]
    expected = []
    tokenizers = {}
    for pre in ("gpt-2", "qwen2"):
        t = tokenizer(pre)
        t.model = models.BPE(vocab, [tuple(m.split(" ")) for m in merges])
        tokenizers[pre] = t
        path = os.path.join(out, f"bpe-{pre}.gguf")
        def vocabulary(w, pre=pre):
            w.add_tokenizer_model("gpt2")
            w.add_tokenizer_pre(pre)
            w.add_token_list(tokens)
            w.add_token_types(types)
            w.add_token_merges(merges)
            w.add_bos_token_id(eot)
            w.add_eos_token_id(eot)
            w.add_add_bos_token(False)

        write_one_block(path, len(tokens), vocabulary)
    for text in BPE_TEXTS:
        expected.append({"text": text, **{pre: t.encode(text).ids for pre, t in tokenizers.items()}})
    with open(os.path.join(out, "bpe-texts.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, ensure_ascii=False)
    write_gpt2(tokens, types, merges, eot)
    return tokenizers["qwen2"]


# SentencePiece-style BPE as Hugging Face writes Llama 2's tokenizer.json: spaces as "▁" with one
# put in front (normalizer Prepend + Replace), merges over characters, and characters outside
# the vocabulary as their UTF-8 bytes' <0xXX> tokens (byte_fallback). Trained by `tokenizers` on
# the corpus; two directories, the normalizer form and the Metaspace pre-tokenizer form, with
# the ids `tokenizers` gives the test texts (hf-spm-*/texts.json).
def write_spm():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    specials = ["<unk>", "<s>", "</s>"]
    base = Tokenizer(models.BPE(unk_token="<unk>"))
    base.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=specials, show_progress=False)
    base.train_from_iterator([CORPUS] * 20, trainer)
    spec = json.loads(base.to_str())["model"]
    # The byte tokens right after the specials, as Llama 2's vocabulary has them.
    pieces = specials + [f"<0x{b:02X}>" for b in range(256)]
    pieces += [p for p, _ in sorted(spec["vocab"].items(), key=lambda kv: kv[1]) if p not in specials]
    vocab = {p: i for i, p in enumerate(pieces)}
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in spec["merges"]]
    for form in ("normalizer", "metaspace"):
        t = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
        if form == "normalizer":
            t.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
        else:
            t.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
        t.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                       decoders.Fuse(), decoders.Strip(" ", 1, 0)])
        t.add_special_tokens(specials)
        d = os.path.join(out, f"hf-spm-{form}")
        os.makedirs(d, exist_ok=True)
        t.save(os.path.join(d, "tokenizer.json"))
        with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
            json.dump({"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True}, f)
        cases = [{"text": text, "ids": t.encode(text, add_special_tokens=False).ids,
                  "decoded": t.decode(t.encode(text, add_special_tokens=False).ids)} for text in BPE_TEXTS]
        with open(os.path.join(d, "texts.json"), "w", encoding="utf-8") as f:
            json.dump(cases, f, ensure_ascii=False)


def write_gpt2(tokens, types, merges, eot):
    """A GPT-2-shaped model (LayerNorm, learned positions, fused q/k/v, GELU, biases, tied
    output) with the byte-level BPE vocabulary above, then llama.cpp's f16 and q8_0 of it and
    their f32 decodings."""
    path = os.path.join(out, "gpt2-f32.gguf")
    w = gguf.GGUFWriter(path, "gpt2")
    w.add_context_length(512)
    w.add_embedding_length(DIM)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FF)
    w.add_head_count(HEADS)
    w.add_layer_norm_eps(1e-5)
    w.add_file_type(0)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(eot)
    w.add_eos_token_id(eot)
    w.add_add_bos_token(False)
    f32 = lambda a: np.asarray(a, np.float32)
    vec = lambda n, s=0.1: f32(s * rng.standard_normal(n, dtype=np.float32))
    w.add_tensor("token_embd.weight", f32(rng.standard_normal((len(tokens), DIM), dtype=np.float32)))
    w.add_tensor("position_embd.weight", vec((512, DIM), 0.5))
    for i in range(LAYERS):
        b = f"blk.{i}."
        w.add_tensor(b + "attn_norm.weight", 1 + vec(DIM))
        w.add_tensor(b + "attn_norm.bias", vec(DIM))
        w.add_tensor(b + "attn_qkv.weight", f32(weight(3 * DIM, DIM)))
        w.add_tensor(b + "attn_qkv.bias", vec(3 * DIM))
        w.add_tensor(b + "attn_output.weight", f32(weight(DIM, DIM)))
        w.add_tensor(b + "attn_output.bias", vec(DIM))
        w.add_tensor(b + "ffn_norm.weight", 1 + vec(DIM))
        w.add_tensor(b + "ffn_norm.bias", vec(DIM))
        w.add_tensor(b + "ffn_up.weight", f32(weight(FF, DIM)))
        w.add_tensor(b + "ffn_up.bias", vec(FF))
        w.add_tensor(b + "ffn_down.weight", f32(weight(DIM, FF)))
        w.add_tensor(b + "ffn_down.bias", vec(DIM))
    w.add_tensor("output_norm.weight", 1 + vec(DIM))
    w.add_tensor("output_norm.bias", vec(DIM))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    for t in ("f16", "q8_0"):
        q = os.path.join(out, f"gpt2-{t}.gguf")
        subprocess.run([peer, "quantize", path, q, t], check=True, stderr=subprocess.DEVNULL)
        dequantize(q, os.path.join(out, f"gpt2-{t}-deq.gguf"))


def bf16(a):
    """The bf16 bits of `a` (round to nearest even), as uint16."""
    u = np.ascontiguousarray(a, np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def from_bf16(b):
    return (b.astype(np.uint32) << 16).view(np.float32)


def write_safetensors(path, tensors):
    """A safetensors file (the format's layout, written here): bf16 arrays given as uint16."""
    header, offset, blobs = {}, 0, []
    for name, a in tensors.items():
        data = np.ascontiguousarray(a).tobytes()
        header[name] = {"dtype": "BF16", "shape": list(a.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little"))
        f.write(h)
        for b in blobs:
            f.write(b)


def write_hf(tok):
    """A Qwen2-shaped Hugging Face directory (bf16 weights in two shards, tied embeddings,
    the BPE tokenizer above) and the logits of an independent numpy forward (float64, on the
    bf16 values) for one text: hf-qwen2/reference.json."""
    d = os.path.join(out, "hf-qwen2")
    os.makedirs(d, exist_ok=True)
    vocab = tok.get_vocab_size()
    layers = 2
    w = {"model.embed_tokens.weight": bf16(rng.standard_normal((vocab, DIM), dtype=np.float32))}
    for i in range(layers):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = bf16(1 + 0.1 * rng.standard_normal(DIM, dtype=np.float32))
        w[p + "post_attention_layernorm.weight"] = bf16(1 + 0.1 * rng.standard_normal(DIM, dtype=np.float32))
        for n, rows, cols in (("q", DIM, DIM), ("k", KV_HEADS * HEAD, DIM), ("v", KV_HEADS * HEAD, DIM)):
            w[p + f"self_attn.{n}_proj.weight"] = bf16(weight(rows, cols))
            w[p + f"self_attn.{n}_proj.bias"] = bf16(0.1 * rng.standard_normal(rows, dtype=np.float32))
        w[p + "self_attn.o_proj.weight"] = bf16(weight(DIM, DIM))
        w[p + "mlp.gate_proj.weight"] = bf16(weight(FF, DIM))
        w[p + "mlp.up_proj.weight"] = bf16(weight(FF, DIM))
        w[p + "mlp.down_proj.weight"] = bf16(weight(DIM, FF))
    w["model.norm.weight"] = bf16(1 + 0.1 * rng.standard_normal(DIM, dtype=np.float32))
    names = sorted(w)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for f, ns in shards.items():
        write_safetensors(os.path.join(d, f), {n: w[n] for n in ns})
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": {n: f for f, ns in shards.items() for n in ns}}, f)
    config = {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_size": DIM,
              "intermediate_size": FF, "num_hidden_layers": layers, "num_attention_heads": HEADS,
              "num_key_value_heads": KV_HEADS, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
              "max_position_embeddings": 512, "vocab_size": vocab, "tie_word_embeddings": True,
              "torch_dtype": "bfloat16"}
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    tok.save(os.path.join(d, "tokenizer.json"))
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": None, "eos_token": "<|endoftext|>", "add_bos_token": False,
                   "chat_template": CHAT_TEMPLATES["chatml"]}, f)
    # The forward, in float64 on the bf16 values.
    W = {n: from_bf16(a).astype(np.float64) for n, a in w.items()}
    text = CORPUS.splitlines()[1] + " " + CORPUS.splitlines()[4]
    ids = tok.encode(text).ids
    t = len(ids)

    def rms(x, g):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-6) * g

    half = HEAD // 2
    inv = 1000000.0 ** (-np.arange(half) * 2.0 / HEAD)
    ang = np.arange(t)[:, None] * inv[None, :]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]

    def rope(v):
        a, b = v[..., :half], v[..., half:]
        return np.concatenate([a * cos - b * sin, b * cos + a * sin], -1)

    x = W["model.embed_tokens.weight"][ids]
    for i in range(layers):
        p = f"model.layers.{i}."
        h = rms(x, W[p + "input_layernorm.weight"])
        proj = lambda n: h @ W[p + f"self_attn.{n}_proj.weight"].T + W[p + f"self_attn.{n}_proj.bias"]
        q = rope(proj("q").reshape(t, HEADS, HEAD))
        k = rope(proj("k").reshape(t, KV_HEADS, HEAD))
        v = proj("v").reshape(t, KV_HEADS, HEAD)
        rep = HEADS // KV_HEADS
        k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
        s = np.einsum("thd,shd->hts", q, k) / np.sqrt(HEAD)
        s = np.where(np.tril(np.ones((t, t), bool))[None], s, -np.inf)
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        a = np.einsum("hts,shd->thd", s, v).reshape(t, HEADS * HEAD)
        x = x + a @ W[p + "self_attn.o_proj.weight"].T
        h = rms(x, W[p + "post_attention_layernorm.weight"])
        g = h @ W[p + "mlp.gate_proj.weight"].T
        x = x + ((g / (1 + np.exp(-g))) * (h @ W[p + "mlp.up_proj.weight"].T)) @ W[p + "mlp.down_proj.weight"].T
    logits = rms(x, W["model.norm.weight"]) @ W["model.embed_tokens.weight"].T
    with open(os.path.join(d, "reference.json"), "w", encoding="utf-8") as f:
        json.dump({"text": text, "ids": ids, "logits": logits.astype(np.float32).tolist()}, f, ensure_ascii=False)


# Chat templates (the Jinja texts the models ship, or a name), each in a one-block model whose
# SentencePiece vocabulary has the templates' special tokens as control tokens.
CHAT_TEMPLATES = {
    "chatml": "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
    "llama3": "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}",
    "llama2": "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}",
    "tinyllama": "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}",
    "zephyr": "zephyr",
}
CHAT_SPECIALS = ["<|im_start|>", "<|im_end|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                 "<|endoftext|>"]


def write_chat(name, template):
    tokens = TOKENS + [t for t in CHAT_SPECIALS if t not in TOKENS]
    types = TYPES + [3] * (len(tokens) - len(TOKENS))
    scores = SCORES + [0.0] * (len(tokens) - len(TOKENS))
    def vocabulary(w):
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_unk_token_id(0)
        w.add_chat_template(template)

    write_one_block(os.path.join(out, f"chat-{name}.gguf"), len(tokens), vocabulary)


def write_one_block(path, n_tokens, vocabulary):
    """A one-block Llama-shaped model of random weights for tokenizer and template tests:
    `vocabulary(writer)` adds the tokenizer's metadata."""
    w = gguf.GGUFWriter(path, "llama")
    w.add_context_length(512)
    w.add_embedding_length(DIM)
    w.add_block_count(1)
    w.add_feed_forward_length(FF)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(HEAD)
    w.add_file_type(0)
    vocabulary(w)
    w.add_tensor("token_embd.weight", rng.standard_normal((n_tokens, DIM), dtype=np.float32))
    for n, shape in [("attn_q", (DIM, DIM)), ("attn_k", (KV_HEADS * HEAD, DIM)), ("attn_v", (KV_HEADS * HEAD, DIM)),
                     ("attn_output", (DIM, DIM)), ("ffn_gate", (FF, DIM)), ("ffn_up", (FF, DIM)), ("ffn_down", (DIM, FF))]:
        w.add_tensor(f"blk.0.{n}.weight", weight(*shape).astype(np.float32))
    for n in ("blk.0.attn_norm", "blk.0.ffn_norm", "output_norm"):
        w.add_tensor(n + ".weight", np.ones(DIM, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


write("llama", bias=False)
write("qwen2", bias=True)
for name, template in CHAT_TEMPLATES.items():
    write_chat(name, template)
write_hf(write_bpe())
write_spm()
with open(os.path.join(out, "corpus.txt"), "w", encoding="utf-8") as f:
    f.write(CORPUS)
print(f"wrote {out}: llama and qwen2, vocabulary of {VOCAB}")
