"""Trains the tiny SmallThinker shipped in models/smallthinker-tiny (see README.md beside this file).

    python tools/train_tiny/train.py --corpus kjv.txt --out models/smallthinker-tiny --work /tmp/tiny

CPU only, 2 threads, seeded. Writes the HF checkpoint (config.json, model.safetensors, tokenizer.json,
tokenizer_config.json) to --out and the training log (loss per step, eval, sparsity, expert usage) to
--out/train_log.json.
"""

import argparse
import json
import math
import os
import random
import re
import time

import torch
import torch.nn.functional as F

from model import Config, SmallThinker, make_config, new_stats

# Qwen2's pre-tokenizer regex: the one pattern our converter and llama.cpp's `qwen2` pre-tokenizer both know.
QWEN2_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def clean_kjv(raw):
    """`bible gen1:1-rev22:21` output -> one verse per line, books separated by a blank line.

    The tool prints "Book N" headings and "  V text" verses wrapped at 80 columns."""
    books, verses, cur, book = [], [], None, None
    for line in raw.splitlines():
        m = re.match(r"^(\S.*?) (\d+)$", line)
        if m:
            if book is not None and m.group(1) != book:
                books.append(verses)
                verses = []
            book = m.group(1)
            continue
        m = re.match(r"^\s+(\d+) (.*)$", line)
        if m:
            if cur:
                verses.append(cur)
            cur = m.group(2).strip()
        elif line.strip():
            cur = (cur + " " + line.strip()) if cur else line.strip()
        else:
            if cur:
                verses.append(cur)
            cur = None
    if cur:
        verses.append(cur)
    books.append(verses)
    return [b for b in books if b]


def train_tokenizer(text_books, vocab_size, out_dir):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2, show_progress=False,
    )
    tok.train_from_iterator(("\n".join(b) for b in text_books), trainer=trainer)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump({
            "tokenizer_class": "Qwen2Tokenizer",
            "model_max_length": 4096,
            "bos_token": None,
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
            "unk_token": None,
            "add_bos_token": False,
            "add_eos_token": False,
            "errors": "replace",
            "clean_up_tokenization_spaces": False,
            "split_special_tokens": False,
            "added_tokens_decoder": {
                str(tok.token_to_id(s)): {"content": s, "lstrip": False, "rstrip": False, "normalized": False,
                                          "single_word": False, "special": True}
                for s in SPECIALS
            },
            "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
            "chat_template": CHAT_TEMPLATE,
        }, f, indent=2)
        f.write("\n")
    return tok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", required=True, help="raw output of `bible gen1:1-rev22:21` (Debian bible-kjv)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=3072)
    # 6 layers, not 4: llama.cpp (and so our engine) keeps RoPE on every layer of a 4-layer SWA model.
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--ffn", type=int, default=192)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--aux", type=float, default=0.01, help="load-balance loss coefficient")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    random.seed(a.seed)
    os.makedirs(a.out, exist_ok=True)
    t0 = time.time()

    with open(a.corpus, encoding="utf-8") as f:
        books = clean_kjv(f.read())
    tok = train_tokenizer(books, a.vocab, a.out)
    eot = tok.token_to_id("<|endoftext|>")
    ids = []
    for b in books:
        ids.extend(tok.encode("\n".join(b) + "\n").ids)
        ids.append(eot)
    data = torch.tensor(ids, dtype=torch.long)
    n_val = len(data) // 50
    train, val = data[:-n_val], data[-n_val:]
    print(f"{len(books)} books, {len(data)} tokens ({len(train)} train, {n_val} val), vocab {tok.get_vocab_size()}",
          flush=True)

    cfg_d = make_config(
        vocab_size=tok.get_vocab_size(), hidden_size=128, layers=a.layers, heads=4, kv_heads=2, head_dim=32,
        experts=8, experts_used=2, ffn=a.ffn, softmax=True, tied=False, window=a.window, nope_swa=True,
        rope_theta=10000.0, max_pos=1024, bos=eot, eos=[eot, tok.token_to_id("<|im_end|>")],
    )
    cfg = Config(cfg_d)
    model = SmallThinker(cfg)
    model.init_weights()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"params {n_params}", flush=True)

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95))
    warm = max(1, a.steps // 20)

    def lr_at(s):
        if s < warm:
            return a.lr * (s + 1) / warm
        return a.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - warm) / (a.steps - warm))))

    gen = torch.Generator().manual_seed(a.seed)

    def batch(src, n):
        ix = torch.randint(0, len(src) - a.ctx - 1, (n,), generator=gen)
        x = torch.stack([src[i:i + a.ctx] for i in ix])
        y = torch.stack([src[i + 1:i + a.ctx + 1] for i in ix])
        return x, y

    @torch.no_grad()
    def evaluate(stats=None):
        model.eval()
        g = torch.Generator().manual_seed(7)
        losses = []
        for i in range(8):
            ix = torch.randint(0, len(val) - a.ctx - 1, (8,), generator=g)
            x = torch.stack([val[j:j + a.ctx] for j in ix])
            y = torch.stack([val[j + 1:j + a.ctx + 1] for j in ix])
            logits, _ = model(x, stats)
            losses.append(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)).item())
        model.train()
        return sum(losses) / len(losses)

    log = {"config": cfg_d, "args": vars(a), "params": n_params, "tokens": len(data), "steps": [], "eval": []}
    model.train()
    t_train = time.time()
    for step in range(a.steps):
        for gr in opt.param_groups:
            gr["lr"] = lr_at(step)
        x, y = batch(train, a.batch)
        logits, router = model(x)
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        # Switch-style balance loss: E * sum_e(fraction routed to e * mean router prob of e), per layer.
        aux = 0.0
        for rl in router:
            p = torch.softmax(rl, dim=-1)
            sel = torch.topk(rl, cfg.n_expert_used, dim=-1).indices
            frac = F.one_hot(sel, cfg.n_expert).float().sum(1).mean(0) / cfg.n_expert_used
            aux = aux + cfg.n_expert * (frac * p.mean(0)).sum()
        loss = ce + a.aux * aux / len(router)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        el = time.time() - t_train
        log["steps"].append({"step": step, "loss": ce.item(), "aux": float(aux) / len(router), "time": el})
        if step % 20 == 0 or step == a.steps - 1:
            print(f"step {step} loss {ce.item():.4f} aux {float(aux) / len(router):.3f} lr {lr_at(step):.2e} "
                  f"{el:.0f}s", flush=True)
        if step % 200 == 0 or step == a.steps - 1:
            vl = evaluate()
            log["eval"].append({"step": step, "val_loss": vl, "time": el})
            print(f"  val {vl:.4f}", flush=True)
            model.save_pretrained(a.out)
            with open(os.path.join(a.out, "train_log.json"), "w") as f:
                json.dump(log, f)

    stats = new_stats(cfg)
    log["final_val_loss"] = evaluate(stats)
    log["sparsity"] = [s["zero"] / s["total"] for s in stats]
    log["usage"] = [s["usage"] for s in stats]
    log["train_seconds"] = time.time() - t_train
    log["total_seconds"] = time.time() - t0
    model.save_pretrained(a.out)
    with open(os.path.join(a.out, "train_log.json"), "w") as f:
        json.dump(log, f)
    print("sparsity", log["sparsity"], "usage", log["usage"], flush=True)
    print(f"done in {log['total_seconds']:.0f}s, val {log['final_val_loss']:.4f}", flush=True)


if __name__ == "__main__":
    main()
