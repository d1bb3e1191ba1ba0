"""SmallThinker in plain PyTorch, as ../../../shared/docs/smallthinker-architecture.md (HF remote code) defines it.

Parameter names equal the HF checkpoint keys, so `save_pretrained` writes a checkpoint that `smallthinker convert`
(and llama.cpp's converter) read unchanged. Computation is float32 throughout (the tiny model is stored in F32).

Per layer l (§2 of the doc):
    router_input = x                        # raw residual stream: before input_layernorm and attention
    x = x + attn(rms(x))                    # RoPE (NeoX) iff rope_layout[l]; SWA mask iff sliding_window_layout[l]
    logits = router_input @ Wr^T ; top-k ; softmax over the k (or sigmoid / sum)
    x = x + sum_j w_j * down_e(up_e(h) * relu(gate_e(h))),  h = rms(x)   (ReGLU experts)
"""

import json
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F


class Config:
    """The config.json fields the architecture uses, with the HF config class's defaults (doc §1.2)."""

    def __init__(self, d):
        self.raw = dict(d)
        self.vocab_size = d["vocab_size"]
        self.hidden_size = d["hidden_size"]
        self.num_hidden_layers = d["num_hidden_layers"]
        self.num_attention_heads = d["num_attention_heads"]
        self.num_key_value_heads = d.get("num_key_value_heads", self.num_attention_heads)
        self.head_dim = d.get("head_dim", self.hidden_size // self.num_attention_heads)
        self.n_expert = d["moe_num_primary_experts"]
        self.n_expert_used = d["moe_num_active_primary_experts"]
        self.moe_ffn_hidden_size = d["moe_ffn_hidden_size"]
        self.softmax = d.get("moe_primary_router_apply_softmax", False)
        self.tie = d.get("tie_word_embeddings", True)
        self.rope_theta = d.get("rope_theta", 1e6)
        self.eps = d.get("rms_norm_eps", 1e-6)
        self.rope_layout = d.get("rope_layout", [1] * self.num_hidden_layers)
        self.swa_layout = d.get("sliding_window_layout", [0] * self.num_hidden_layers)
        self.window = d.get("sliding_window_size", 4096)
        assert len(self.rope_layout) == len(self.swa_layout) == self.num_hidden_layers
        assert self.num_attention_heads % self.num_key_value_heads == 0


def make_config(*, vocab_size, hidden_size, layers, heads, kv_heads, head_dim, experts, experts_used, ffn,
                softmax, tied, window, nope_swa, rope_theta, max_pos, bos, eos):
    """A SmallThinker config.json dict. nope_swa: the 21B layout (il % 4 == 0 NoPE + full, others RoPE + SWA)."""
    if nope_swa:
        rope = [0 if il % 4 == 0 else 1 for il in range(layers)]
        swa = [0 if il % 4 == 0 else 1 for il in range(layers)]
    else:
        rope, swa = [1] * layers, [0] * layers
    return {
        "architectures": ["SmallThinkerForCausalLM"],
        "model_type": "smallthinker",
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "moe_num_primary_experts": experts,
        "moe_num_active_primary_experts": experts_used,
        "moe_ffn_hidden_size": ffn,
        "moe_primary_router_apply_softmax": softmax,
        "tie_word_embeddings": tied,
        "rope_theta": rope_theta,
        "rope_scaling": None,
        "rope_layout": rope,
        "sliding_window_layout": swa,
        "sliding_window_size": window,
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": max_pos,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "torch_dtype": "float32",
        "use_cache": True,
    }


class RMSNorm(nn.Module):
    def __init__(self, n, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(cfg, positions):
    """cos, sin [T, head_dim] of HF's "default" rope: inv_freq[i] = theta^(-2i/hd), emb = cat(freqs, freqs)."""
    hd = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    freqs = positions.float()[:, None] * inv_freq[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg, il):
        super().__init__()
        self.cfg = cfg
        self.use_rope = cfg.rope_layout[il] == 1
        self.use_swa = cfg.swa_layout[il] == 1
        hd, nh, nkv, h = cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.hidden_size
        self.q_proj = nn.Linear(h, nh * hd, bias=False)
        self.k_proj = nn.Linear(h, nkv * hd, bias=False)
        self.v_proj = nn.Linear(h, nkv * hd, bias=False)
        self.o_proj = nn.Linear(nh * hd, h, bias=False)

    def forward(self, x, cos, sin, mask_full, mask_swa):
        b, t, _ = x.shape
        c = self.cfg
        q = self.q_proj(x).view(b, t, c.num_attention_heads, c.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, c.num_key_value_heads, c.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, c.num_key_value_heads, c.head_dim).transpose(1, 2)
        if self.use_rope:
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
        rep = c.num_attention_heads // c.num_key_value_heads
        k = k.repeat_interleave(rep, dim=1)  # kv head g serves q heads g*rep .. g*rep+rep-1
        v = v.repeat_interleave(rep, dim=1)
        mask = mask_swa if self.use_swa else mask_full
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=c.head_dim ** -0.5)
        return self.o_proj(o.transpose(1, 2).reshape(b, t, -1))


class Expert(nn.Module):
    def __init__(self, h, f):
        super().__init__()
        self.gate = nn.Linear(h, f, bias=False)
        self.up = nn.Linear(h, f, bias=False)
        self.down = nn.Linear(f, h, bias=False)


class MoE(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.primary_router = nn.Linear(cfg.hidden_size, cfg.n_expert, bias=False)
        self.experts = nn.ModuleList(Expert(cfg.hidden_size, cfg.moe_ffn_hidden_size) for _ in range(cfg.n_expert))

    def forward(self, h, router_input, stats=None):
        """h, router_input [N, H] -> [N, H]; returns (out, router logits [N, E])."""
        c = self.cfg
        logits = self.primary_router(router_input)  # [N, E]
        top, sel = torch.topk(logits, c.n_expert_used, dim=-1)  # [N, k], sorted descending
        if c.softmax:
            w = torch.softmax(top, dim=-1)
        else:
            s = torch.sigmoid(top)
            w = s / s.sum(-1, keepdim=True)
        out = torch.zeros_like(h)
        for e in range(c.n_expert):
            tok, slot = torch.nonzero(sel == e, as_tuple=True)
            if tok.numel() == 0:
                continue
            x = h[tok]
            ex = self.experts[e]
            g = ex.gate(x)
            a = ex.up(x) * F.relu(g)
            out.index_add_(0, tok, w[tok, slot, None] * ex.down(a))
            if stats is not None:
                stats["zero"] += float((g <= 0).float().sum())
                stats["total"] += g.numel()
                stats["usage"][e] += tok.numel()
        return out, logits


class Layer(nn.Module):
    def __init__(self, cfg, il):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.eps)
        self.self_attn = Attention(cfg, il)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.eps)
        self.block_sparse_moe = MoE(cfg)

    def forward(self, x, cos, sin, mask_full, mask_swa, stats=None):
        router_input = x  # pre-attention router on the raw layer input (doc Q1)
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask_full, mask_swa)
        b, t, hdim = x.shape
        y, logits = self.block_sparse_moe(self.post_attention_layernorm(x).reshape(-1, hdim),
                                          router_input.reshape(-1, hdim), stats)
        return x + y.view(b, t, hdim), logits


class Backbone(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Layer(cfg, il) for il in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.eps)


class SmallThinker(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.model = Backbone(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie:
            self.lm_head.weight = self.model.embed_tokens.weight

    def init_weights(self, std=0.02):
        """GPT-2 style init; residual output projections scaled by 1/sqrt(2 * n_layer)."""
        for name, p in self.named_parameters():
            if name.endswith("layernorm.weight") or name == "model.norm.weight":
                nn.init.ones_(p)
            elif name.endswith("o_proj.weight") or name.endswith("down.weight"):
                nn.init.normal_(p, std=std / math.sqrt(2 * self.cfg.num_hidden_layers))
            else:
                nn.init.normal_(p, std=std)

    def forward(self, ids, stats=None):
        """ids [B, T] -> logits [B, T, V], list of per-layer router logits [B*T, E]. stats: per-layer dicts."""
        c = self.cfg
        t = ids.shape[1]
        pos = torch.arange(t)
        cos, sin = rope_tables(c, pos)
        qi, kj = pos[:, None], pos[None, :]
        mask_full = kj <= qi
        mask_swa = mask_full & (kj > qi - c.window)  # HF: kv > q - window (query itself included)
        x = self.model.embed_tokens(ids)
        router_logits = []
        for il, layer in enumerate(self.model.layers):
            x, rl = layer(x, cos, sin, mask_full, mask_swa, None if stats is None else stats[il])
            router_logits.append(rl)
        return self.lm_head(self.model.norm(x)), router_logits

    def save_pretrained(self, out_dir):
        from safetensors.torch import save_file

        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "config.json"), "w") as f:
            json.dump(self.cfg.raw, f, indent=2)
            f.write("\n")
        sd = {k: v.detach().contiguous().clone() for k, v in self.state_dict().items()}
        if self.cfg.tie:
            sd.pop("lm_head.weight")  # tied: the embedding serves as the output (doc Q5)
        save_file(sd, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})

    @staticmethod
    def from_pretrained(path):
        from safetensors.torch import load_file

        with open(os.path.join(path, "config.json")) as f:
            cfg = Config(json.load(f))
        m = SmallThinker(cfg)
        sd = {k: v.float() for k, v in load_file(os.path.join(path, "model.safetensors")).items()}
        if cfg.tie:
            sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
        m.load_state_dict(sd, strict=True)
        return m.eval()


def new_stats(cfg):
    return [{"zero": 0.0, "total": 0, "usage": [0] * cfg.n_expert} for _ in range(cfg.num_hidden_layers)]
