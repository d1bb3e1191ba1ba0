//! One decode step of several sessions as one graph (the server's active slots): the embedding, projections,
//! router, MoE and lm_head run once over one row per session, so every weight is read once per step instead of
//! once per session; only the KV-cache store and the attention are per session, each against its own cache at
//! its own position (graph::attention splits the rows).
//!
//! MoE path: the batch takes the path each session's own one-token step takes (sparse unless the setup is
//! dense or its `sparse_max_batch` is 0), so batched logits equal the per-session ones up to summation order.
//! `sparse_max_batch` sends prompts to ggml's mul_mat_id, which pays when many tokens share an expert; the few
//! rows of a decode batch are independent tokens, for which the sparse op still skips the up/down rows of
//! inactive neurons per token and groups the tokens by expert, so a chunk's gate/up rows are read once per step.

use super::smallthinker::{build, graph_size, GraphInputs, SeqInputs};
use super::step_graph::{graph_context, seq_attn_inputs, set_seq_inputs};
use super::{EvalError, Rows, Session};
use crate::ggml::Tensor;
use crate::gguf::GgmlType;

/// Evaluates `tokens[i]` as the next position of `sessions[i]`, all in one graph, and returns each session's
/// logits `[n_vocab]`. The sessions must share one model and one [`MoeSetup`](super::MoeSetup) (the server's
/// slots do); the graph runs on session 0's backend (its thread count). Inputs are checked before anything is
/// placed in a cache; a failed compute leaves every cache of the batch in an unknown state (`reset` them).
pub fn decode_batch(sessions: &mut [&mut Session<'_>], tokens: &[u32]) -> Result<Vec<Vec<f32>>, EvalError> {
    if tokens.len() != sessions.len() {
        return Err(EvalError::BatchLength {
            sessions: sessions.len(),
            tokens: tokens.len(),
        });
    }
    let Some(first) = sessions.first() else {
        return Err(EvalError::Empty);
    };
    let model = first.model;
    let moe = first.moe.clone();
    for (index, s) in sessions.iter().enumerate() {
        if !std::ptr::eq(s.model, model) {
            return Err(EvalError::BatchMismatch { index, what: "model" });
        }
        if !s.moe.same_as(&moe) {
            return Err(EvalError::BatchMismatch {
                index,
                what: "MoE path (MoeSetup)",
            });
        }
        s.check(&tokens[index..index + 1]).map_err(|e| EvalError::InBatch {
            index,
            source: Box::new(e),
        })?;
    }
    if let [s] = sessions {
        // One session: its own graph, exactly as a decode step of `eval`.
        return Ok(vec![s.eval(tokens, Rows::Last)?]);
    }

    let hp = &model.hp;
    let n = sessions.len();
    let plans: Vec<_> = sessions.iter_mut().map(|s| s.kv.place(s.n_past, 1)).collect();
    let n_nodes = graph_size(hp, n);
    let ctx = graph_context(n_nodes)?;
    let input =
        |name: &str, ty: GgmlType, ne: &[i64]| -> Tensor<'_> { ctx.new_tensor(ty, ne).set_name(name).set_input() };
    let rows = n as i64;
    let pos = input("inp_pos", GgmlType::I32, &[rows]);
    let seqs = sessions
        .iter()
        .zip(&plans)
        .enumerate()
        .map(|(i, (s, plan))| {
            // Session i's row of the positions: what its queries may see in its cache.
            let pos_i = ctx.view_1d(pos, 1, i * std::mem::size_of::<i32>());
            let (full, swa) = seq_attn_inputs(&ctx, s.attn, pos_i, plan, &format!("_{i}"));
            SeqInputs {
                first: i as i64,
                n_tokens: 1,
                kv: &s.kv,
                full,
                swa,
            }
        })
        .collect();
    let inputs = GraphInputs {
        tokens: input("inp_tokens", GgmlType::I32, &[rows]),
        out_ids: input("inp_out_ids", GgmlType::I32, &[rows]),
        pos,
        seqs,
    };
    let mut gf = ctx.new_graph(n_nodes);
    let sparse = moe.sparse().map(|s| &**s).filter(|_| moe.sparse_max_batch >= 1);
    let logits = build(&ctx, &mut gf, model, &inputs, sparse).set_output();
    gf.build_forward_expand(logits);
    ctx.allocate_graph(&gf)?;

    let tok: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
    inputs.tokens.set_i32(&tok)?;
    inputs.out_ids.set_i32(&(0..rows as i32).collect::<Vec<_>>())?;
    let positions: Vec<i32> = sessions.iter().map(|s| s.n_past as i32).collect();
    pos.set_i32(&positions)?;
    for (seq, plan) in inputs.seqs.iter().zip(&plans) {
        set_seq_inputs(seq, plan)?;
    }
    gf.compute_with_backend(&sessions[0].backend)?;
    moe.check_reads()?;
    drop(inputs);
    for s in sessions.iter_mut() {
        s.n_past += 1;
    }
    let n_vocab = hp.n_vocab as usize;
    Ok(logits.to_f32_vec()?.chunks(n_vocab).map(<[f32]>::to_vec).collect())
}
