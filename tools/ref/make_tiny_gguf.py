#!/usr/bin/env python3
"""Write tiny random-weight SmallThinker GGUFs (all F32, seeded) for the model tests.

Usage: make_tiny_gguf.py OUT_DIR   (writes OUT_DIR/<config>/f32.gguf for every config in CONFIGS)

Run with the reference environment (gguf-py 0.19, numpy), e.g. /work/ref/REF/bin/python. The files are what
llama.cpp's converter would write for a SmallThinker checkpoint (same keys and types, same tensor names and ggml
shapes), only small: a 1024-token slice of the Qwen2 vocabulary and a few layers. llama_fixtures.py runs
llama.cpp on them and writes the logits fixtures.
"""
import sys
from pathlib import Path

import numpy as np
import gguf

ROOT = Path(__file__).resolve().parents[2]
VOCAB = ROOT / "vendor/qwen2-vocab/ggml-vocab-qwen2.gguf"

# Regular tokens kept from the Qwen2 vocabulary (the 256 byte tokens plus the first merges), then the three ChatML
# specials appended, so n_vocab = 1024.
N_REGULAR = 1021
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# Each config exercises a different part of the graph (see tests/fixtures/model/README.md):
#   st4b  : 4B-like. All layers RoPE + full attention, sigmoid gating, tied output (no output.weight), GQA 6,
#           head_dim 64, n_head*head_dim = 384 != n_embd. Small embeddings and larger layer outputs, so that
#           with tied embeddings the model does not simply predict its input token (greedy would then repeat).
#   st21b : 21B-like. sliding_window written => layers 0 and 4 NoPE + full attention, layers 1-3 RoPE + SWA
#           4096, softmax gating, untied output, GQA 2, head_dim 128. Five layers, not four: llama.cpp's NoPE rule
#           (`n_no_rope_layer_step == n_layer || il % 4 != 0`) puts RoPE on every layer of a 4-layer model.
#           Small q/k weights keep attention broad, so that the keys leaving the window matter.
#   stmha : GQA 1 (plain MHA). key_length/value_length and rope.freq_base left out so the defaults
#           (n_embd/n_head = 32, 10000) apply; sigmoid gating, untied, eps 1e-5; layer 0's router is built so
#           that two tokens get all-negative router logits (sigmoid sum < 6.1e-5, llama.cpp's weight-sum clamp).
CONFIGS = {
    "st4b": dict(seed=4, n_layer=3, n_embd=64, n_head=6, n_head_kv=1, head_dim=64, write_head_dim=True,
                 n_expert=8, n_expert_used=2, n_ff_exp=32, gating=2, tied=True, sliding_window=None,
                 rope_base=1.5e6, eps=1e-6, n_ctx_train=2048, clamp_tokens=[], embd_scale=0.3, out_scale=3.0, qk_scale=1.5),
    "st21b": dict(seed=21, n_layer=5, n_embd=64, n_head=2, n_head_kv=1, head_dim=128, write_head_dim=True,
                  n_expert=6, n_expert_used=2, n_ff_exp=32, gating=1, tied=False, sliding_window=4096,
                  rope_base=1.5e6, eps=1e-6, n_ctx_train=8192, clamp_tokens=[], embd_scale=1.0, out_scale=1.0, qk_scale=0.5),
    "stmha": dict(seed=7, n_layer=2, n_embd=64, n_head=2, n_head_kv=2, head_dim=32, write_head_dim=False,
                  n_expert=4, n_expert_used=2, n_ff_exp=32, gating=2, tied=False, sliding_window=None,
                  rope_base=None, eps=1e-5, n_ctx_train=2048, clamp_tokens=[7, 500], embd_scale=1.0, out_scale=1.0, qk_scale=1.5),
}

CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>'"
    " + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def small_vocab():
    """(tokens, token_types, merges) of the 1024-token slice: merges whose parts and result are all kept."""
    r = gguf.GGUFReader(str(VOCAB))
    f = r.fields["tokenizer.ggml.tokens"]
    toks = [bytes(f.parts[i]).decode() for i in f.data]
    m = r.fields["tokenizer.ggml.merges"]
    merges = [bytes(m.parts[i]).decode() for i in m.data]
    kept = toks[:N_REGULAR]
    have = set(kept)
    kept_merges = [mm for mm in merges
                   if all(p in have for p in mm.split(" ")) and mm.replace(" ", "") in have]
    tokens = kept + SPECIALS
    types = [1] * len(kept) + [3] * len(SPECIALS)  # NORMAL, CONTROL
    return tokens, types, kept_merges


def make_weights(c, n_vocab):
    """Tensors in llama.cpp's create_tensor order, as numpy arrays in torch order (ggml ne reversed)."""
    rng = np.random.default_rng(c["seed"])
    E, H, F, hd = c["n_expert"], c["n_embd"], c["n_ff_exp"], c["head_dim"]
    q_dim, kv_dim = hd * c["n_head"], hd * c["n_head_kv"]

    def mat(rows, cols, scale=1.0):
        # std scale/sqrt(fan_in): activations stay O(1) and logits spread over a few units.
        return (rng.standard_normal((rows, cols)) * scale / np.sqrt(cols)).astype(np.float32)

    def norm(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    t = {}
    embd = (c["embd_scale"] * rng.standard_normal((n_vocab, H))).astype(np.float32)
    d = rng.standard_normal(H)
    d /= np.linalg.norm(d)
    for tok in c["clamp_tokens"]:
        # A token embedding along d; layer 0's router rows all get -5*d (below), so its logits are about -20.
        embd[tok] = (4.0 * d + 0.05 * rng.standard_normal(H)).astype(np.float32)
    t["token_embd.weight"] = embd
    t["output_norm.weight"] = norm(H)
    if not c["tied"]:
        t["output.weight"] = mat(n_vocab, H, 3.0)
    for il in range(c["n_layer"]):
        p = f"blk.{il}."
        t[p + "attn_norm.weight"] = norm(H)
        t[p + "attn_q.weight"] = mat(q_dim, H, c["qk_scale"])
        t[p + "attn_k.weight"] = mat(kv_dim, H, c["qk_scale"])
        t[p + "attn_v.weight"] = mat(kv_dim, H)
        t[p + "attn_output.weight"] = mat(H, q_dim, c["out_scale"])
        t[p + "ffn_norm.weight"] = norm(H)
        router = mat(E, H, 1.5)
        if il == 0 and c["clamp_tokens"]:
            router = (router - 5.0 * d[None, :]).astype(np.float32)
        t[p + "ffn_gate_inp.weight"] = router
        t[p + "ffn_gate_exps.weight"] = np.stack([mat(F, H) for _ in range(E)])
        t[p + "ffn_down_exps.weight"] = np.stack([mat(H, F, c["out_scale"]) for _ in range(E)])
        t[p + "ffn_up_exps.weight"] = np.stack([mat(F, H) for _ in range(E)])
    return t


def write(name, c, out_dir):
    tokens, types, merges = small_vocab()
    path = out_dir / name / "f32.gguf"
    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(path), arch="smallthinker")
    a = "smallthinker."
    w.add_string("general.type", "model")
    w.add_string("general.name", f"tiny-{name}")
    w.add_uint32(a + "block_count", c["n_layer"])
    w.add_uint32(a + "context_length", c["n_ctx_train"])
    w.add_uint32(a + "embedding_length", c["n_embd"])
    w.add_uint32(a + "feed_forward_length", c["n_ff_exp"])
    w.add_uint32(a + "attention.head_count", c["n_head"])
    w.add_uint32(a + "attention.head_count_kv", c["n_head_kv"])
    if c["rope_base"] is not None:
        w.add_float32(a + "rope.freq_base", c["rope_base"])
    w.add_float32(a + "attention.layer_norm_rms_epsilon", c["eps"])
    if c["write_head_dim"]:
        w.add_uint32(a + "attention.key_length", c["head_dim"])
        w.add_uint32(a + "attention.value_length", c["head_dim"])
    else:
        assert c["head_dim"] == c["n_embd"] // c["n_head"], "the default head_dim is n_embd / n_head"
    w.add_uint32("general.file_type", 0)
    w.add_uint32(a + "expert_count", c["n_expert"])
    w.add_uint32(a + "expert_used_count", c["n_expert_used"])
    w.add_uint32(a + "expert_feed_forward_length", c["n_ff_exp"])
    w.add_uint32(a + "expert_gating_func", c["gating"])
    if c["sliding_window"] is not None:
        w.add_uint32(a + "attention.sliding_window", c["sliding_window"])
    w.add_uint32("general.quantization_version", 2)
    w.add_string("tokenizer.ggml.model", "gpt2")
    w.add_string("tokenizer.ggml.pre", "qwen2")
    w.add_array("tokenizer.ggml.tokens", tokens)
    w.add_array("tokenizer.ggml.token_type", types)
    w.add_array("tokenizer.ggml.merges", merges)
    eot = tokens.index("<|endoftext|>")
    w.add_uint32("tokenizer.ggml.bos_token_id", eot)
    w.add_uint32("tokenizer.ggml.eos_token_id", tokens.index("<|im_end|>"))
    w.add_uint32("tokenizer.ggml.padding_token_id", eot)
    w.add_bool("tokenizer.ggml.add_bos_token", False)
    w.add_string("tokenizer.chat_template", CHAT_TEMPLATE)
    for tname, arr in make_weights(c, len(tokens)).items():
        w.add_tensor(tname, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out_dir = Path(sys.argv[1])
    for name, c in CONFIGS.items():
        p = write(name, c, out_dir)
        print(f"{p}: {p.stat().st_size} bytes")


if __name__ == "__main__":
    main()
