//! The SmallThinker forward graph, in the order of llama.cpp's `src/models/smallthinker.cpp`
//! (smallthinker-architecture.md §2 and §7). Per-layer policy (RoPE or NoPE, full or sliding-window attention,
//! gating) comes from [`Hparams`]; the blocks are in [`crate::graph`].

use super::{Hparams, KvCache, Model};
use crate::ggml::{Context, Graph, RopeParams, Tensor};
use crate::graph::{attention, linear, moe_ffn, rms_norm_w, AttnInputs, AttnParams, SeqAttn, SparseMoe};

/// The host-set inputs of one evaluation: a batch of rows from one or more sequences.
pub struct GraphInputs<'a, 'b> {
    /// I32 `[n_tokens]`
    pub tokens: Tensor<'a>,
    /// I32 `[n_outputs]`: the rows of the batch whose logits are wanted.
    pub out_ids: Tensor<'a>,
    /// I32 `[n_tokens]`: the position of every row in its own sequence (RoPE).
    pub pos: Tensor<'a>,
    /// The sequences the rows belong to, in row order.
    pub seqs: Vec<SeqInputs<'a, 'b>>,
}

/// One sequence of a batch: its rows, its KV cache, and its attention inputs per kind of layer.
pub struct SeqInputs<'a, 'b> {
    /// First row of the batch that is this sequence's.
    pub first: i64,
    /// Its rows (consecutive).
    pub n_tokens: i64,
    pub kv: &'b KvCache<'a>,
    /// Positions, cells and mask of the full-attention layers.
    pub full: AttnInputs<'a>,
    /// The same for the SWA layers (None when the model has none).
    pub swa: Option<AttnInputs<'a>>,
}

/// Nodes (and leafs) a graph of this model can need for `n_seqs` sequences: about 50 per layer plus two per
/// used expert, and for each further sequence its views, stores, attention and concat (19 nodes on the
/// soft_max path, the longest).
pub fn graph_size(hp: &Hparams, n_seqs: usize) -> usize {
    let per_layer = 64 + 4 * hp.n_expert_used as usize + 24 * n_seqs.saturating_sub(1);
    (hp.n_layer as usize) * per_layer + 256 + 8 * n_seqs
}

/// How layer `il` attends: NEOX RoPE unless NoPE, scaled by 1/sqrt(head_dim).
fn attn_params(hp: &Hparams, il: u32) -> AttnParams {
    let rope = RopeParams {
        n_ctx_orig: hp.n_ctx_train as i32, // YaRN only; unused without it
        ..RopeParams::neox(hp.n_rot() as i32, hp.rope_freq_base(il))
    };
    AttnParams {
        n_head: i64::from(hp.n_head),
        n_head_kv: i64::from(hp.n_head_kv),
        n_embd_head: i64::from(hp.n_embd_head()),
        rope: hp.use_rope(il).then_some(rope),
        kq_scale: 1.0 / (hp.n_embd_head() as f32).sqrt(),
    }
}

/// Builds the graph up to the logits `[n_vocab, n_outputs]`; the KV-cache stores are expanded into `gf` as
/// they are built, the logits are left for the caller to expand.
pub fn build<'a>(
    ctx: &'a Context,
    gf: &mut Graph<'a>,
    m: &Model<'a>,
    inp: &GraphInputs<'a, '_>,
    sparse: Option<&SparseMoe>,
) -> Tensor<'a> {
    let hp = &m.hp;
    let eps = hp.rms_norm_eps;
    let mut inp_l = ctx.get_rows(m.tok_embd, inp.tokens).format_name("inp_embd", -1); // [n_embd, n_tokens]

    let routers: Vec<Tensor<'a>> = m.layers.iter().map(|l| l.ffn_gate_inp).collect();
    for (il, l) in (0u32..).zip(&m.layers) {
        let ilc = il as i32; // llama.cpp's name suffix
        let mut inp_sa = inp_l;

        // SmallThinker: the router reads the raw layer input, before attn_norm (so experts can be prefetched).
        // [n_expert, n_tokens]
        let mut router_logits = linear(ctx, l.ffn_gate_inp, inp_l).format_name("ffn_moe_logits", ilc);
        // Sparse path: gating and top-k here, before attention, publishing the expert ids (graph::sparse_moe).
        // [k, n_tokens]
        let route = sparse.map(|s| s.route(ctx, gf, router_logits, il));
        // With an expert cache: later layers' routers on this input start their experts' reads early.
        if let Some(s) = sparse {
            s.lookahead(ctx, gf, inp_l, &routers, il);
        }

        let cur = rms_norm_w(ctx, inp_l, l.attn_norm, eps).format_name("attn_norm", ilc);
        let seqs: Vec<SeqAttn<'a>> = inp
            .seqs
            .iter()
            .map(|s| SeqAttn {
                first: s.first,
                n_tokens: s.n_tokens,
                kv: s.kv.layer(il),
                inp: match (hp.is_swa(il), &s.swa) {
                    (true, Some(swa)) => *swa,
                    _ => s.full,
                },
            })
            .collect();
        let mut cur = attention(ctx, gf, cur, &l.attn, inp.pos, &seqs, &attn_params(hp, il), ilc);

        let last = il + 1 == hp.n_layer;
        if last {
            // Only the rows whose logits are wanted go through the last FFN (llama.cpp's out_ids).
            cur = ctx.get_rows(cur, inp.out_ids);
            inp_sa = ctx.get_rows(inp_sa, inp.out_ids);
            router_logits = ctx.get_rows(router_logits, inp.out_ids);
        }

        let ffn_inp = ctx.add(cur, inp_sa).format_name("ffn_inp", ilc);
        let cur = rms_norm_w(ctx, ffn_inp, l.ffn_norm, eps).format_name("ffn_norm", ilc);
        // ReGLU experts, gated by softmax or sigmoid over the router logits, top-k, renormalised.
        let cur = match (sparse, route) {
            (Some(s), Some(w)) => s.experts(ctx, cur, w, &l.experts, last.then_some(inp.out_ids), il),
            _ => moe_ffn(ctx, cur, router_logits, &l.experts, &hp.moe(), ilc),
        };
        inp_l = ctx.add(cur, ffn_inp).format_name("l_out", ilc); // [n_embd, n_tokens]
    }

    let cur = rms_norm_w(ctx, inp_l, m.output_norm, eps).format_name("result_norm", -1);
    // lm_head: output.weight, or token_embd when tied.
    linear(ctx, m.output, cur).format_name("result_output", -1) // [n_vocab, n_outputs]
}
