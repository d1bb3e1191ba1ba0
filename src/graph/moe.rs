//! The sparse MoE feed-forward block: llama.cpp's `build_moe_ffn` with SmallThinker's choices (router logits
//! computed by the caller, gating over all experts, top-k, renormalised weights with a lower bound on their sum,
//! ReGLU experts, outputs summed in slot order), configured by [`MoeParams`].

use crate::ggml::{Context, Tensor};
use crate::model::{Gating, MoeParams};

/// The stacked expert matrices of one layer.
#[derive(Clone, Copy)]
pub struct MoeWeights<'a> {
    /// `[n_embd, n_ff_exp, n_expert]`
    pub gate_exps: Tensor<'a>,
    /// `[n_embd, n_ff_exp, n_expert]`
    pub up_exps: Tensor<'a>,
    /// `[n_ff_exp, n_embd, n_expert]`
    pub down_exps: Tensor<'a>,
}

/// `cur [n_embd, n_tokens]` (normed), `logits [n_expert, n_tokens]` (the router's) -> `[n_embd, n_tokens]`.
pub fn moe_ffn<'a>(
    ctx: &'a Context,
    cur: Tensor<'a>,
    logits: Tensor<'a>,
    w: &MoeWeights<'a>,
    p: &MoeParams,
    il: i32,
) -> Tensor<'a> {
    let (n_embd, n_tokens) = (cur.ne()[0], cur.ne()[1]);
    let n_expert = i64::from(p.n_expert);
    let k = i64::from(p.n_expert_used);

    // Gating over all experts; top-k of the gated probabilities (softmax and sigmoid are monotone).
    let probs = match p.gating {
        Gating::Softmax => ctx.softmax(logits),
        Gating::Sigmoid => ctx.sigmoid(logits),
    }
    .format_name("ffn_moe_probs", il); // [n_expert, n_tokens]
    let selected = ctx.argsort_top_k(probs, k).format_name("ffn_moe_topk", il); // [k, n_tokens]
    let weights = ctx.get_rows(ctx.reshape_3d(probs, 1, n_expert, n_tokens), selected); // [1, k, n_tokens]
    let weights = ctx.reshape_2d(weights.format_name("ffn_moe_weights", il), k, n_tokens); // [k, n_tokens]

    // Renormalise; the bound keeps all-tiny sigmoid weights from blowing up (llama.cpp b6844+).
    let weights_sum = ctx.clamp(ctx.sum_rows(weights), p.weights_sum_min, f32::INFINITY); // [1, n_tokens]
    let weights = ctx.div(weights, weights_sum).format_name("ffn_moe_weights_norm", il);
    let weights = ctx.reshape_3d(weights, 1, k, n_tokens); // [1, k, n_tokens]

    // ReGLU experts: down(relu(gate(x)) * up(x)), per token and selected expert.
    let cur = ctx.reshape_3d(cur, n_embd, 1, n_tokens); // [n_embd, 1, n_tokens]
    let up = ctx.mul_mat_id(w.up_exps, cur, selected).format_name("ffn_moe_up", il); // [n_ff_exp, k, n_tokens]
    let gate = ctx
        .mul_mat_id(w.gate_exps, cur, selected)
        .format_name("ffn_moe_gate", il);
    let par = ctx.reglu_split(gate, up).format_name("ffn_moe_reglu", il); // [n_ff_exp, k, n_tokens]
    let experts = ctx
        .mul_mat_id(w.down_exps, par, selected)
        .format_name("ffn_moe_down", il); // [n_embd, k, n_tokens]
    let experts = ctx.mul(experts, weights).format_name("ffn_moe_weighted", il);

    // Sum the k slots in order (top-1 first), as llama.cpp does.
    let nb = experts.nb();
    let slot = |i: i64| ctx.view_2d(experts, n_embd, n_tokens, nb[2], i as usize * nb[1]); // [n_embd, n_tokens]
    let moe_out = (1..k).fold(slot(0), |acc, i| ctx.add(acc, slot(i)));
    // One slot is a strided view; the residual add wants contiguous data, as llama.cpp's cont does.
    let moe_out = if k == 1 { ctx.cont(moe_out) } else { moe_out };
    moe_out.format_name("ffn_moe_out", il)
}
