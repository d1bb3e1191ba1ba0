//! The sparse MoE path (engine-notes §2(a)(b)): a router op that runs before attention and publishes each
//! layer's expert ids, and a ReGLU expert op that computes the gate rows densely, `up` only where
//! `relu(gate) > 0`, and `down` only for those neurons through a neuron-major copy of `ffn_down_exps` built here.
//!
//! Work split: the (expert, 32-neuron chunk) items of the experts a batch uses are dealt round-robin to
//! [`N_PARTS`] fixed parts; each part accumulates its items, for every token routed to the item's expert, into
//! its own plane of partial sums, and threads take whole parts (no barrier per expert, all threads busy on one
//! expert). A second op sums the planes in part order, so the result does not depend on the thread count.
//! Tokens are grouped by expert: a chunk's gate/up/down rows are read once per batch, not once per token.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use super::expert_cache::ExpertCache;
use super::moe::MoeWeights;
use super::sparse_batched::{batched_expert_op, sorted_sum_op};
use super::sparse_kernel::{expert_op, reduce_op, router_op};
use super::sparse_native::{native_expert_op, weighted_sum_op, Interleaved, NativeDown};
use super::sparse_split::{down_sum_op, hidden_op};
use crate::ggml::q4x8::Gemv;
use crate::ggml::rows::{AlignedBytes, RowDequant, RowDot, RowQuant};
use crate::ggml::{Context, Graph, Tensor};
use crate::gguf::GgmlType;
use crate::model::{Gating, MoeParams};

/// Fixed number of partial-sum planes per MoE op (see the module docs).
pub const N_PARTS: usize = 8;
/// Neurons per work item.
pub const CHUNK: usize = 32;

/// The expert ids the router chose for one layer, handed to a [`RouteHook`] before that layer's attention runs.
pub struct RouteEvent<'e> {
    pub layer: u32,
    /// Tokens of the batch (router rows).
    pub n_tokens: usize,
    /// Experts per token.
    pub k: usize,
    /// `[n_tokens][k]` row-major, highest-weight expert first.
    pub expert_ids: &'e [i32],
}

/// Called on a compute thread, in the router op of every layer, before the layer's attention. Keep it short
/// (e.g. queue reads of the experts that are not resident); it must not call back into the session.
pub type RouteHook = Arc<dyn Fn(&RouteEvent<'_>) + Send + Sync>;

/// Neuron counters of the sparse expert op since the last reset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MoeStats {
    /// (token, selected expert, neuron) triples with `relu(gate) > 0`, i.e. whose up and down rows were used.
    pub active_neurons: u64,
    /// All (token, selected expert, neuron) triples.
    pub total_neurons: u64,
}

impl MoeStats {
    /// `active / total` (0 when nothing ran).
    pub fn active_frac(&self) -> f64 {
        if self.total_neurons == 0 {
            0.0
        } else {
            self.active_neurons as f64 / self.total_neurons as f64
        }
    }
}

/// Why a model cannot take the sparse path (it then runs dense).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SparseMoeError {
    #[error("layer {layer}: {what} has type {ty}, without a CPU dot product / conversion for rows of {n}")]
    Unsupported {
        layer: u32,
        what: &'static str,
        ty: GgmlType,
        n: usize,
    },
    #[error("layer {layer}: cannot read ffn_down_exps: {message}")]
    Read { layer: u32, message: String },
}

pub(super) struct Shared {
    pub active: AtomicU64,
    pub total: AtomicU64,
    pub hook: RwLock<Option<RouteHook>>,
    /// With a memory budget: the experts' slots, which the router fills and the native expert op reads.
    pub cache: Option<Arc<ExpertCache>>,
}

/// One layer's state shared with its ops' closures.
pub(super) struct LayerState {
    pub il: u32,
    /// `[n_embd, n_ff_exp, n_expert]` in `down_ty`: row (j, e) is neuron j's output column of expert e (empty
    /// on the native layout).
    pub down_t: AlignedBytes,
    /// Set on the native layout (no transposed copy): the down product on `ffn_down_exps` as stored.
    pub native: Option<NativeDown>,
    pub down: RowDequant,
    pub gate: RowDot,
    pub up: RowDot,
    pub gate_q: RowQuant,
    pub up_q: RowQuant,
    /// The router op's choice for the current batch, `[n_tokens][k]`.
    pub ids: RwLock<Vec<i32>>,
    pub p: MoeParams,
    pub n_embd: usize,
    pub shared: Arc<Shared>,
}

/// Per-session sparse-MoE state: the transposed down copies, counters and the route hook.
pub struct SparseMoe {
    layers: Vec<Arc<LayerState>>,
    shared: Arc<Shared>,
    down_ty: GgmlType,
    lookahead: u32,
}

/// How the sparse op reads `down`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DownType {
    /// The default: [`DownType::Native`]. Measured on the synthetic 4B and 21B shapes (about half the neurons
    /// active) and on the trained tiny model (about a quarter), reading whole Q4_0 down rows was as fast as a
    /// transposed copy; it keeps the file's bytes (no extra memory: a Q8_0 copy of the 21B's down alone is about
    /// 7 GB) and gives logits bit-identical to ggml's mul_mat_id graph.
    #[default]
    Auto,
    /// A neuron-major copy of this type, built at load time, whose rows are read only for active neurons (Q8_0
    /// keeps the precision, Q4_0 the size; requantising along the other axis costs precision either way).
    Fixed(GgmlType),
    /// No transposed copy: `down` as the GGUF stores it, with the hidden vector quantised as ggml's mul_mat
    /// does (the layout of the expert cache, whose slots hold the file's bytes).
    Native,
}

/// How [`SparseMoe::new`] builds the sparse path.
pub struct SparseParams {
    pub down: DownType,
    /// Threads for building the transposed copies.
    pub n_threads: usize,
    /// Experts come from this cache instead of the mapped tensors (requires [`DownType::Native`]).
    pub cache: Option<ExpertCache>,
    /// The expert tensors are ggml's repacked (interleaved) Q4_0 ones: the op runs the 8-row kernels on them
    /// (requires [`DownType::Native`]; with a cache, the cache says whether its slots are interleaved).
    pub repacked: bool,
    /// With a cache: how many layers ahead the lookahead routers hint (0: none; see [`SparseMoe::lookahead`]).
    pub lookahead: u32,
}

/// Batches of more tokens than this get no lookahead hints (a prompt needs most experts anyway).
pub const LOOKAHEAD_MAX_TOKENS: i64 = 8;

impl SparseMoe {
    /// Builds the neuron-major down copy of every layer (dequantise, transpose, requantise; `n_threads` threads).
    pub fn new(
        layers: &[MoeWeights<'_>],
        p: &MoeParams,
        n_embd: usize,
        sp: SparseParams,
    ) -> Result<SparseMoe, SparseMoeError> {
        let (down, n_threads) = (sp.down, sp.n_threads);
        let lookahead = if sp.cache.is_some() { sp.lookahead } else { 0 };
        let down = match (down, &sp.cache) {
            (_, Some(_)) | (DownType::Auto, None) => DownType::Native,
            _ if sp.repacked => DownType::Native,
            (d, None) => d,
        };
        let shared = Arc::new(Shared {
            active: AtomicU64::new(0),
            total: AtomicU64::new(0),
            hook: RwLock::new(None),
            cache: sp.cache.map(Arc::new),
        });
        let n_ff = p.n_ff_exp as usize;
        let n_expert = p.n_expert as usize;
        let interleaved = match &shared.cache {
            Some(c) => c.is_interleaved(),
            None => sp.repacked,
        };
        let mut down_ty = GgmlType::F32;
        let states = (0u32..)
            .zip(layers)
            .map(|(il, w)| {
                let unsupported = |what, ty, n| SparseMoeError::Unsupported { layer: il, what, ty, n };
                let src_ty = w.down_exps.ty();
                let want = match down {
                    DownType::Fixed(t) => t,
                    DownType::Auto | DownType::Native => src_ty,
                };
                // Fall back to F32 rows when n_embd is not whole blocks of the wanted type.
                let ty = if down == DownType::Native || RowQuant::new(want, n_embd).is_some() {
                    want
                } else {
                    GgmlType::F32
                };
                down_ty = ty;
                let gate = RowDot::new(w.gate_exps.ty(), n_embd).ok_or(unsupported(
                    "ffn_gate_exps",
                    w.gate_exps.ty(),
                    n_embd,
                ))?;
                let up =
                    RowDot::new(w.up_exps.ty(), n_embd).ok_or(unsupported("ffn_up_exps", w.up_exps.ty(), n_embd))?;
                let gate_q = RowQuant::new(gate.y_type(), n_embd).ok_or(unsupported(
                    "ffn_gate_exps activations",
                    gate.y_type(),
                    n_embd,
                ))?;
                let up_q = RowQuant::new(up.y_type(), n_embd).ok_or(unsupported(
                    "ffn_up_exps activations",
                    up.y_type(),
                    n_embd,
                ))?;
                // The down side: the file's layout read whole, or a neuron-major copy read by active neuron.
                let (down_rows, down_t, native) = if down == DownType::Native {
                    let dot = RowDot::new(src_ty, n_ff).ok_or(unsupported("ffn_down_exps", src_ty, n_ff))?;
                    let h_q = RowQuant::new(dot.y_type(), n_ff).ok_or(unsupported(
                        "ffn_down_exps activations",
                        dot.y_type(),
                        n_ff,
                    ))?;
                    let f32_rows = RowDequant::new(GgmlType::F32, n_embd).expect("F32 rows");
                    let x8 = if interleaved {
                        let gate_up = Gemv::new(w.gate_exps.ty(), n_embd, n_ff)
                            .filter(|_| w.up_exps.ty() == w.gate_exps.ty())
                            .ok_or(unsupported(
                                "interleaved ffn_gate_exps/ffn_up_exps",
                                w.gate_exps.ty(),
                                n_embd,
                            ))?;
                        let down = Gemv::new(src_ty, n_ff, n_embd).ok_or(unsupported(
                            "interleaved ffn_down_exps",
                            src_ty,
                            n_ff,
                        ))?;
                        Some(Interleaved { gate_up, down })
                    } else {
                        None
                    };
                    (f32_rows, AlignedBytes::zeroed(0), Some(NativeDown { dot, h_q, x8 }))
                } else {
                    let src_deq = RowDequant::new(src_ty, n_ff).ok_or(unsupported("ffn_down_exps", src_ty, n_ff))?;
                    let bytes = w.down_exps.to_bytes().map_err(|e| SparseMoeError::Read {
                        layer: il,
                        message: e.to_string(),
                    })?;
                    let down_t = transpose_down(&bytes, src_deq, ty, n_embd, n_ff, n_expert, n_threads);
                    (RowDequant::new(ty, n_embd).expect("checked above"), down_t, None)
                };
                Ok(Arc::new(LayerState {
                    il,
                    down: down_rows,
                    down_t,
                    native,
                    gate,
                    up,
                    gate_q,
                    up_q,
                    ids: RwLock::new(Vec::new()),
                    p: *p,
                    n_embd,
                    shared: shared.clone(),
                }))
            })
            .collect::<Result<Vec<_>, SparseMoeError>>()?;
        Ok(SparseMoe {
            layers: states,
            shared,
            down_ty,
            lookahead,
        })
    }

    /// The type of the transposed down copies (on the native layout: of `ffn_down_exps`).
    pub fn down_type(&self) -> GgmlType {
        self.down_ty
    }

    /// Whether `down` runs on the GGUF's layout ([`DownType::Native`]) rather than a transposed copy.
    pub fn is_native(&self) -> bool {
        self.layers.first().is_some_and(|l| l.native.is_some())
    }

    /// The expert cache, with a memory budget.
    pub fn cache(&self) -> Option<&ExpertCache> {
        self.shared.cache.as_deref()
    }

    /// Bytes of the transposed down copies, all layers.
    pub fn down_bytes(&self) -> usize {
        self.layers.iter().map(|l| l.down_t.as_slice().len()).sum()
    }

    pub fn stats(&self) -> MoeStats {
        MoeStats {
            active_neurons: self.shared.active.load(Ordering::Relaxed),
            total_neurons: self.shared.total.load(Ordering::Relaxed),
        }
    }

    pub fn reset_stats(&self) {
        self.shared.active.store(0, Ordering::Relaxed);
        self.shared.total.store(0, Ordering::Relaxed);
    }

    /// Installs (or with None removes) the hook the router ops call with each layer's expert ids.
    pub fn set_route_hook(&self, hook: Option<RouteHook>) {
        *self.shared.hook.write().unwrap_or_else(|p| p.into_inner()) = hook;
    }

    /// The router of layer `il`: `logits [n_expert, n_tokens]` -> gated probabilities (`ffn_moe_probs`, ggml
    /// ops) -> the renormalised top-k weights `[k, n_tokens]`, named `ffn_moe_weights_norm`. The expert ids go to
    /// the layer's slot and the hook. Expanded into `gf` at once so that it runs before the attention built after.
    pub fn route<'a>(&self, ctx: &'a Context, gf: &mut Graph<'a>, logits: Tensor<'a>, il: u32) -> Tensor<'a> {
        let l = self.layers[il as usize].clone();
        let probs = match l.p.gating {
            Gating::Softmax => ctx.softmax(logits),
            Gating::Sigmoid => ctx.sigmoid(logits),
        }
        .format_name("ffn_moe_probs", il as i32); // [n_expert, n_tokens]
        let (k, n_tokens) = (i64::from(l.p.n_expert_used), probs.ne()[1]);
        let w = ctx
            .custom_4d_single("ffn_moe_route", [k, n_tokens, 1, 1], &[probs], move |op| {
                router_op(&l, op)
            })
            .format_name("ffn_moe_weights_norm", il as i32);
        gf.build_forward_expand(w);
        w
    }

    /// Lookahead for the expert cache: on layer `il`'s input `inp [n_embd, n_tokens]`, the routers (`routers`, one
    /// per layer) of the layers `lookahead` ahead (from layer 0: all of 1..=lookahead) give those layers' likely
    /// experts, which go to the cache as hints, so their reads start before their own routers run. Nothing without
    /// a cache, with lookahead 0, or on batches of more than [`LOOKAHEAD_MAX_TOKENS`] tokens.
    pub fn lookahead<'a>(
        &self,
        ctx: &'a Context,
        gf: &mut Graph<'a>,
        inp: Tensor<'a>,
        routers: &[Tensor<'a>],
        il: u32,
    ) {
        let (Some(cache), d) = (self.shared.cache.clone(), self.lookahead) else {
            return;
        };
        if d == 0 || inp.ne()[1] > LOOKAHEAD_MAX_TOKENS {
            return;
        }
        let first = if il == 0 { 1 } else { il + d };
        let targets: Vec<u32> = (first..=il + d).filter(|&j| (j as usize) < routers.len()).collect();
        if targets.is_empty() {
            return;
        }
        let logits: Vec<Tensor<'a>> = targets
            .iter()
            .map(|&j| {
                ctx.mul_mat(routers[j as usize], inp)
                    .format_name("ffn_moe_ahead_logits", j as i32)
            })
            .collect(); // [n_expert, n_tokens] each
        let k = self.layers[0].p.n_expert_used as usize;
        let hint = ctx
            .custom_4d_single("ffn_moe_lookahead", [1, 1, 1, 1], &logits, move |op| {
                for (i, &j) in targets.iter().enumerate() {
                    cache.hint(j, &top_k_ids(op.src(i), op.src_ne(i)[0] as usize, k));
                }
                for (_, d) in op.dst_rows_all() {
                    d.fill(0.0);
                }
            })
            .format_name("ffn_moe_lookahead", il as i32);
        gf.build_forward_expand(hint);
    }

    /// The experts of layer `il`: `cur [n_embd, n_out]` (ffn_norm output), `weights` from [`route`](Self::route)
    /// over `n_tokens >= n_out` router rows, `out_ids [n_out]` mapping `cur`'s rows to router rows (None: the
    /// identity) -> `[n_embd, n_out]` named `ffn_moe_out`.
    pub fn experts<'a>(
        &self,
        ctx: &'a Context,
        cur: Tensor<'a>,
        weights: Tensor<'a>,
        w: &MoeWeights<'a>,
        out_ids: Option<Tensor<'a>>,
        il: u32,
    ) -> Tensor<'a> {
        let l = self.layers[il as usize].clone();
        let (n_embd, n_out) = (cur.ne()[0], cur.ne()[1]);
        let batched = n_out > 1 && l.native.as_ref().is_some_and(|nd| nd.x8.is_some());
        if batched {
            // Several tokens on interleaved experts: rows sorted by expert through our GEMM.
            let k = i64::from(l.p.n_expert_used);
            let mut args = vec![cur, w.gate_exps, w.up_exps, w.down_exps];
            args.extend(out_ids);
            let (cache, ls) = (self.shared.cache.clone(), l.clone());
            let y = ctx
                .custom_4d("ffn_moe_down", [n_embd, k * n_out, 1, 1], &args, move |op| {
                    let nd = ls.native.as_ref().expect("native layer");
                    let x8 = nd.x8.as_ref().expect("interleaved layer");
                    batched_expert_op(&ls, (x8, &nd.h_q), cache.as_deref(), op)
                })
                .format_name("ffn_moe_down", il as i32); // [n_embd, k * n_out], rows sorted by expert
            let mut args = vec![y, weights];
            args.extend(out_ids);
            return ctx
                .custom_4d("ffn_moe_sum", [n_embd, n_out, 1, 1], &args, move |op| {
                    sorted_sum_op(&l, op)
                })
                .format_name("ffn_moe_out", il as i32); // [n_embd, n_out]
        }
        let interleaved = l.native.as_ref().is_some_and(|nd| nd.x8.is_some());
        if interleaved && self.shared.cache.is_none() {
            // One token on experts in memory: neuron chunks over all threads (`sparse_split`). With a cache, whose
            // slots a reader may refill between two ops, the expert stays one op's (`native_expert_op`).
            let k = i64::from(l.p.n_expert_used);
            let mut args = vec![cur, w.gate_exps, w.up_exps];
            args.extend(out_ids);
            let ls = l.clone();
            let h = ctx
                .custom_4d(
                    "ffn_moe_hidden",
                    [i64::from(l.p.n_ff_exp), k * n_out, 1, 1],
                    &args,
                    move |op| hidden_op(&ls, interleaved_of(&ls), op),
                )
                .format_name("ffn_moe_hidden", il as i32); // [n_ff, k * n_out]
            let mut args = vec![h, weights, w.down_exps];
            args.extend(out_ids);
            return ctx
                .custom_4d("ffn_moe_down_sum", [n_embd, n_out, 1, 1], &args, move |op| {
                    down_sum_op(&l, interleaved_of(&l), op)
                })
                .format_name("ffn_moe_out", il as i32); // [n_embd, n_out]
        }
        if l.native.is_some() {
            let k = i64::from(l.p.n_expert_used);
            let mut args = vec![cur, w.gate_exps, w.up_exps, w.down_exps];
            args.extend(out_ids);
            let cache = self.shared.cache.clone();
            let y = ctx
                .custom_4d("ffn_moe_down", [n_embd, k * n_out, 1, 1], &args, move |op| {
                    let nd = l.native.as_ref().expect("native layer");
                    native_expert_op(&l, nd, cache.as_deref(), op)
                })
                .format_name("ffn_moe_down", il as i32); // [n_embd, k * n_out]
            let mut args = vec![y, weights];
            args.extend(out_ids);
            let k = k as usize;
            return ctx
                .custom_4d("ffn_moe_sum", [n_embd, n_out, 1, 1], &args, move |op| {
                    weighted_sum_op(k, op)
                })
                .format_name("ffn_moe_out", il as i32); // [n_embd, n_out]
        }
        let mut args = vec![cur, weights, w.gate_exps, w.up_exps];
        args.extend(out_ids);
        let parts = ctx
            .custom_4d("ffn_moe_parts", [n_embd, n_out, N_PARTS as i64, 1], &args, move |op| {
                expert_op(&l, op)
            })
            .format_name("ffn_moe_parts", il as i32); // [n_embd, n_out, N_PARTS]
        ctx.custom_4d("ffn_moe_sum", [n_embd, n_out, 1, 1], &[parts], reduce_op)
            .format_name("ffn_moe_out", il as i32) // [n_embd, n_out]
    }
}

fn interleaved_of(l: &LayerState) -> &Interleaved {
    l.native
        .as_ref()
        .and_then(|nd| nd.x8.as_ref())
        .expect("interleaved layer")
}

/// The `k` highest of each row of `n` logits (the gating is monotonic, so these are the top-k probabilities).
fn top_k_ids(logits: &[f32], n: usize, k: usize) -> Vec<i32> {
    let mut ids = Vec::with_capacity(logits.len() / n.max(1) * k);
    let mut order: Vec<usize> = (0..n).collect();
    for row in logits.chunks_exact(n) {
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        ids.extend(order[..k.min(n)].iter().map(|&e| e as i32));
    }
    ids
}

/// `[n_ff, n_embd, n_expert]` of `src` (llama.cpp's layout) -> `[n_embd, n_ff, n_expert]` rows of `ty`.
fn transpose_down(
    src: &[u8],
    src_deq: RowDequant,
    ty: GgmlType,
    n_embd: usize,
    n_ff: usize,
    n_expert: usize,
    n_threads: usize,
) -> AlignedBytes {
    let q = RowQuant::new(ty, n_embd).expect("checked by the caller");
    let mut out = AlignedBytes::rows(ty, n_embd, n_ff * n_expert);
    let expert_out = q.len() * n_ff;
    let expert_in = src_deq.len() * n_embd;
    let mut chunks: Vec<(usize, &mut [u8])> = out.as_mut_slice().chunks_mut(expert_out).enumerate().collect();
    let per = chunks.len().div_ceil(n_threads.max(1));
    std::thread::scope(|s| {
        for group in chunks.chunks_mut(per.max(1)) {
            s.spawn(move || {
                let mut m = vec![0f32; n_ff * n_embd]; // [n_ff, n_embd] as read
                let mut t = vec![0f32; n_embd];
                for (e, dst) in group.iter_mut() {
                    // Source rows are not always aligned in a copy: go through an aligned row buffer.
                    let mut row = AlignedBytes::zeroed(src_deq.len());
                    for r in 0..n_embd {
                        let off = *e * expert_in + r * src_deq.len();
                        row.as_mut_slice().copy_from_slice(&src[off..off + src_deq.len()]);
                        src_deq.run(row.as_slice(), &mut m[r * n_ff..(r + 1) * n_ff]);
                    }
                    let mut qrow = AlignedBytes::zeroed(q.len());
                    for j in 0..n_ff {
                        for (r, v) in t.iter_mut().enumerate() {
                            *v = m[r * n_ff + j];
                        }
                        q.run(&t, qrow.as_mut_slice());
                        dst[j * q.len()..(j + 1) * q.len()].copy_from_slice(qrow.as_slice());
                    }
                }
            });
        }
    });
    out
}
