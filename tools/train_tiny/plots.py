"""The model card's figures: loss curve, ReGLU sparsity per layer, expert usage per layer (PNG, matplotlib).

    python tools/train_tiny/plots.py models/smallthinker-tiny

Reads train_log.json (train.py) and stats.json (make_fixtures.py --stats-text) from that folder and writes
loss.png, sparsity.png and experts.png beside them. matplotlib is only needed here, never by the tests.
"""

import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    d = sys.argv[1]
    log = json.load(open(os.path.join(d, "train_log.json")))
    st = json.load(open(os.path.join(d, "stats.json")))

    steps = [s["step"] for s in log["steps"]]
    loss = [s["loss"] for s in log["steps"]]
    k = 20
    smooth = [sum(loss[max(0, i - k + 1):i + 1]) / len(loss[max(0, i - k + 1):i + 1]) for i in range(len(loss))]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, loss, alpha=0.3, label="train (per step)")
    ax.plot(steps, smooth, label=f"train ({k}-step mean)")
    ax.plot([e["step"] for e in log["eval"]], [e["val_loss"] for e in log["eval"]], "o-", label="held-out")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title("smallthinker-tiny training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(d, "loss.png"), dpi=100)

    sp = st["sparsity"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(range(len(sp)), [100 * s for s in sp])
    for i, s in enumerate(sp):
        ax.text(i, 100 * s + 1, f"{100 * s:.0f}%", ha="center")
    ax.set_ylim(0, 100)
    ax.set_xlabel("layer")
    ax.set_ylabel("relu(gate) == 0 (%)")
    ax.set_title("ReGLU neuron sparsity of the routed experts (held-out text)")
    fig.tight_layout()
    fig.savefig(os.path.join(d, "sparsity.png"), dpi=100)

    us = st["usage"]
    n_layer, n_expert = len(us), len(us[0])
    fig, axes = plt.subplots(1, n_layer, figsize=(2.2 * n_layer, 3), sharey=True)
    for il, ax in enumerate(axes):
        tot = sum(us[il])
        ax.bar(range(n_expert), [100 * u / tot for u in us[il]])
        ax.axhline(100 / n_expert, color="gray", lw=0.8, ls="--")
        ax.set_title(f"layer {il}")
        ax.set_xticks(range(n_expert))
        ax.set_xlabel("expert")
    axes[0].set_ylabel("share of top-2 slots (%)")
    fig.suptitle("expert usage (dashed: uniform)")
    fig.tight_layout()
    fig.savefig(os.path.join(d, "experts.png"), dpi=100)
    print("wrote loss.png sparsity.png experts.png")


if __name__ == "__main__":
    main()
