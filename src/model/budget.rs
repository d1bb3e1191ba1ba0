//! `--mem-budget`: sizing the expert cache so that everything the process holds fits the budget.
//!
//! What is counted, in order: the process as it stands once the dense weights (attention, router, norms,
//! output; repacked copies already sit in memory, mapped ones are faulted in now) are resident (its resident
//! set, which includes the tokenizer and the binary), the KV cache as allocated, a bound on the compute buffers
//! of one batch, and a safety margin; the rest is expert slots, each holding one expert's three matrices as the
//! file stores them (Q4_0 interleaved once read). Expert pages are never touched through the map (its readahead
//! is turned off), and the page cache that loading left is dropped, so the page cache holds no second copy.

use std::sync::Arc;

use super::session::MoeSetup;
use super::Model;
use crate::ggml::q4x8::Gemv;
use crate::graph::{
    CacheParams, CachePolicy, DownType, ExpertCache, ExpertExtents, ExpertFile, ExpertReadError, Extent, IoBackend,
    SparseMoe, SparseParams, N_PARTS,
};

const MIB: f64 = 1024.0 * 1024.0;

/// What the budget covers and how the cache behaves.
#[derive(Clone, Debug)]
pub struct BudgetParams {
    pub bytes: u64,
    pub policy: CachePolicy,
    /// Experts read at once (pread threads, or experts in flight on the io_uring).
    pub io_threads: usize,
    /// How experts are read; [`IoBackend::Uring`] fails where io_uring cannot be set up.
    pub io_backend: IoBackend,
    /// Threads of the compute backend (the sparse op's work split).
    pub n_threads: usize,
    /// Tokens per graph (bounds the compute buffers).
    pub n_batch: u32,
    /// Rows of logits a batch returns at most (1 for generation; `n_batch` for perplexity).
    pub n_outputs: u32,
    /// Per (layer, expert), layer-major: selection frequencies from a profile, seeding the frequency policy.
    pub frequencies: Option<Vec<f32>>,
    /// (layer, expert) pairs to load at start and never evict (a profile's hottest first), at most the slots
    /// beyond two layers' experts.
    pub pinned: Vec<(u32, u32)>,
    /// Count this as the process's resident set instead of measuring it (for a process that shares the budget
    /// with other work it accounts for itself, and for tests running concurrently).
    pub assume_resident: Option<u64>,
    /// Interleave each expert slot once read, where all three matrices are Q4_0 that ggml would repack: the
    /// capped experts then run the kernels, and give the logits, of the uncapped `--repack all` path.
    pub interleave: bool,
    /// Layers ahead that lookahead routers hint the cache (`SparseMoe::lookahead`; 0: only the layer's own
    /// router issues reads).
    pub lookahead: u32,
}

/// Why a budgeted setup could not be made.
#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    #[error(
        "--mem-budget {budget_mib:.0} MiB is too small for {path}: the minimum is {minimum_mib:.0} MiB (process and \
         dense weights {resident_mib:.0} MiB, KV cache {kv_mib:.0} MiB, compute buffers {compute_mib:.0} MiB, margin \
         {margin_mib:.0} MiB, and one layer's {n_expert} experts at {slot_mib:.1} MiB each)"
    )]
    TooSmall {
        path: String,
        budget_mib: f64,
        minimum_mib: f64,
        resident_mib: f64,
        kv_mib: f64,
        compute_mib: f64,
        margin_mib: f64,
        n_expert: u32,
        slot_mib: f64,
    },
    #[error("{path}: expert {tensor}: {why}")]
    Layout { path: String, tensor: String, why: String },
    #[error(transparent)]
    Read(#[from] ExpertReadError),
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error("{0}")]
    Sparse(String),
}

/// How the budget was split, for the start-up log.
#[derive(Clone, Copy, Debug)]
pub struct BudgetReport {
    pub resident: u64,
    pub kv: u64,
    pub compute: u64,
    pub slot: u64,
    pub n_slots: usize,
    pub n_experts_total: usize,
    pub direct_io: bool,
    /// The backend in use (never `Auto`).
    pub io_backend: IoBackend,
}

/// The resident set of this process (`/proc/self/statm`), in bytes.
pub fn resident_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = s.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// A bound on one batch's compute buffers: activations of `n_batch` tokens (residual, norms, attention
/// projections, router, the sparse op's rows) plus the logits of `n_outputs` rows, with headroom.
fn compute_bound(model: &Model<'_>, n_batch: u32, n_outputs: u32) -> u64 {
    let hp = &model.hp;
    let (n_embd, k) = (u64::from(hp.n_embd), u64::from(hp.n_expert_used));
    let qkv = u64::from(hp.n_embd_q() + 2 * hp.n_embd_k_gqa());
    let per_token = 4 * (16 * n_embd + 2 * qkv + (k + N_PARTS as u64) * n_embd + 4 * u64::from(hp.n_expert));
    let logits = 4 * u64::from(hp.n_vocab) * u64::from(n_outputs.max(1));
    u64::from(n_batch) * per_token + logits + (16 << 20)
}

/// Whether every layer's three expert matrices are Q4_0 of a shape ggml repacks (so [`Gemv`] runs them).
fn interleavable(model: &Model<'_>) -> bool {
    let (n_embd, n_ff) = (model.hp.n_embd as usize, model.hp.n_ff_exp as usize);
    model.layers.iter().all(|l| {
        let x = &l.experts;
        Gemv::new(x.gate_exps.ty(), n_embd, n_ff).is_some()
            && Gemv::new(x.up_exps.ty(), n_embd, n_ff).is_some()
            && Gemv::new(x.down_exps.ty(), n_ff, n_embd).is_some()
    })
}

fn extents(model: &Model<'_>) -> Result<(Vec<ExpertExtents>, Vec<[String; 3]>), BudgetError> {
    let file = model.file;
    let path = file.path().display().to_string();
    let n_expert = u64::from(model.hp.n_expert);
    let mut out = Vec::new();
    let mut names = Vec::new();
    for il in 0..model.hp.n_layer {
        let layer_names = ["ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"].map(|b| format!("blk.{il}.{b}.weight"));
        let mut per = [Extent { offset: 0, len: 0 }; 3];
        let info: Vec<_> = layer_names
            .iter()
            .map(|n| {
                file.tensor(n).ok_or_else(|| BudgetError::Layout {
                    path: path.clone(),
                    tensor: n.clone(),
                    why: "missing".into(),
                })
            })
            .collect::<Result<_, _>>()?;
        for (i, t) in info.iter().enumerate() {
            if t.size % n_expert != 0 {
                return Err(BudgetError::Layout {
                    path: path.clone(),
                    tensor: t.name.clone(),
                    why: format!("{} bytes are not {n_expert} equal experts", t.size),
                });
            }
            per[i] = Extent {
                offset: file.tensor_file_offset(t),
                len: t.size / n_expert,
            };
        }
        for e in 0..n_expert {
            let at = |x: Extent| Extent {
                offset: x.offset + e * x.len,
                len: x.len,
            };
            out.push(ExpertExtents {
                gate: at(per[0]),
                up: at(per[1]),
                down: at(per[2]),
            });
        }
        names.push(layer_names);
    }
    Ok((out, names))
}

impl MoeSetup {
    /// The sparse path on the native layout with experts from a cache sized to `b.bytes`, given the bytes of
    /// the KV caches of every session that will share it ([`super::KvCache::allocated_bytes`]). Faults in the dense
    /// weights only. Every batch takes the sparse op, since the dense one would read the experts through the map.
    pub fn with_budget(
        model: &Model<'_>,
        kv_bytes: u64,
        b: &BudgetParams,
    ) -> Result<(MoeSetup, BudgetReport), BudgetError> {
        let file = model.file;
        let path = file.path().display().to_string();
        let io = |e: std::io::Error| BudgetError::Io {
            path: path.clone(),
            message: e.to_string(),
        };
        let (extents, exp_names) = extents(model)?;
        let names = model.mapped_dense();
        let dense: Vec<_> = names.iter().filter_map(|n| file.tensor(n)).collect();
        file.prefault_only(&dense).map_err(io)?;
        // Best effort: without it a cgroup cap reclaims under the cache instead of seeing free memory.
        let _ = file.drop_page_cache();
        let resident = b.assume_resident.or_else(resident_bytes).unwrap_or(0);
        let compute = compute_bound(model, b.n_batch, b.n_outputs);
        let margin = b.bytes / 32 + (16 << 20);
        let slot = ExpertCache::slot_bytes(&extents) as u64;
        let n_expert = model.hp.n_expert as usize;
        let fixed = resident + kv_bytes + compute + margin;
        let n_slots = (b.bytes.saturating_sub(fixed) / slot) as usize;
        if n_slots < n_expert {
            return Err(BudgetError::TooSmall {
                path,
                budget_mib: b.bytes as f64 / MIB,
                minimum_mib: (fixed + slot * n_expert as u64) as f64 / MIB,
                resident_mib: resident as f64 / MIB,
                kv_mib: kv_bytes as f64 / MIB,
                compute_mib: compute as f64 / MIB,
                margin_mib: margin as f64 / MIB,
                n_expert: model.hp.n_expert,
                slot_mib: slot as f64 / MIB,
            });
        }
        let n_slots = n_slots.min(extents.len());
        let efile = ExpertFile::open(file.path(), file.identity())?;
        let interleave = (b.interleave && interleavable(model)).then_some({
            let (n_embd, n_ff) = (model.hp.n_embd as usize, model.hp.n_ff_exp as usize);
            [n_embd, n_embd, n_ff]
        });
        let cache = ExpertCache::new(
            efile,
            extents,
            exp_names,
            n_expert,
            CacheParams {
                n_slots,
                policy: b.policy,
                io_threads: b.io_threads,
                backend: b.io_backend,
                frequencies: b.frequencies.clone(),
                interleave,
            },
        )?;
        let (direct_io, io_backend, io_description) = (cache.is_direct(), cache.io_backend(), cache.io_description());
        let hp = &model.hp;
        let experts: Vec<_> = model.layers.iter().map(|l| l.experts).collect();
        let sparse = SparseMoe::new(
            &experts,
            &hp.moe(),
            hp.n_embd as usize,
            SparseParams {
                down: DownType::Native,
                n_threads: b.n_threads,
                cache: Some(cache),
                repacked: false,
                lookahead: b.lookahead,
            },
        )
        .map_err(|e| BudgetError::Sparse(format!("{path}: the expert cache needs the sparse path: {e}")))?;
        let cache = sparse.cache().expect("built with a cache");
        // Pinned slots leave at least two layers' worth for the rest, so cold experts still find slots.
        let room = n_slots.saturating_sub(2 * n_expert);
        let keys: Vec<usize> = b
            .pinned
            .iter()
            .filter(|&&(il, e)| il < hp.n_layer && e < hp.n_expert)
            .map(|&(il, e)| il as usize * n_expert + e as usize)
            .take(room)
            .collect();
        cache.pin_permanent(&keys)?;
        let report = BudgetReport {
            resident,
            kv: kv_bytes,
            compute,
            slot,
            n_slots,
            n_experts_total: n_expert * hp.n_layer as usize,
            direct_io,
            io_backend,
        };
        let layout = if cache.is_interleaved() {
            "slots interleaved as ggml repacks Q4_0 (8-row GEMV)"
        } else {
            "slots in the GGUF layout"
        };
        let description = format!(
            "sparse, experts from a cache of {n_slots} of {} experts ({:.0} MiB; {} pinned; reads: {io_description}), {layout}; budget {:.0} MiB = process and dense weights {:.0} + KV {:.0} + compute {:.0} + margin \
             {:.0} + cache",
            report.n_experts_total,
            (n_slots as u64 * slot) as f64 / MIB,
            keys.len(),
            b.bytes as f64 / MIB,
            resident as f64 / MIB,
            kv_bytes as f64 / MIB,
            compute as f64 / MIB,
            margin as f64 / MIB,
        );
        Ok((
            MoeSetup::from_parts(Some(Arc::new(sparse)), u32::MAX, description),
            report,
        ))
    }
}
