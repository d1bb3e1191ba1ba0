//! The graph of one batch of a session, built in its own context and kept with its inputs and outputs
//! ([`OwnedGraph`]). A decode step's graph is kept for the next step when nothing its shape depends on has
//! changed ([`StepKey`]): the cells the attention reads are padded to a multiple of [`KV_PAD`], so that 256
//! consecutive steps share one graph and only set their inputs (llama.cpp reuses decode graphs the same way).
//! On the 4B, building and allocating a step's graph took about 0.5 ms of a 13 ms step.

use super::smallthinker::{build, graph_size, GraphInputs, SeqInputs};
use super::{BatchCells, BatchPlan, KvCache, Model};
use crate::ggml::{Built, Context, ContextParams, GgmlError, OwnedGraph, Tensor};
use crate::gguf::GgmlType;
use crate::graph::{AttnInputs, AttnKernel, KvRead, SparseMoe};

/// Decode steps read the cache's cells up to a multiple of this many (the empty ones cost a scan of their
/// positions), as llama.cpp pads its KV view to 256 cells.
pub(super) const KV_PAD: usize = 256;

/// What a graph's shape depends on besides the model and the session's cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct StepKey {
    n_tokens: usize,
    n_outputs: usize,
    n_kv_full: i64,
    n_kv_swa: Option<i64>,
    sparse: bool,
    attn: AttnKernel,
}

impl StepKey {
    pub(super) fn new(n_tokens: usize, n_outputs: usize, plan: &BatchPlan, sparse: bool, attn: AttnKernel) -> Self {
        StepKey {
            n_tokens,
            n_outputs,
            n_kv_full: plan.full.n_kv,
            n_kv_swa: plan.swa.as_ref().map(|s| s.n_kv),
            sparse,
            attn,
        }
    }
}

/// The kept tensors, in this order: the logits, the token, output-row and position inputs, then per kind of
/// cache (full, then SWA if the model has it) its cell indices and what the attention reads (cell positions or
/// mask), then the traced tensors.
const LOGITS: usize = 0;
const TOKENS: usize = 1;
const OUT_IDS: usize = 2;
const POS: usize = 3;
const CELLS: usize = 4;

/// One batch's graph, ready to take its inputs and run.
pub(super) struct StepGraph<'a> {
    pub(super) key: StepKey,
    graph: OwnedGraph<'a>,
    has_swa: bool,
}

impl<'a> StepGraph<'a> {
    /// Builds and allocates the graph of a batch placed by `plan`, with the tensors named in `trace` kept out of
    /// the allocator's reuse.
    pub(super) fn build(
        model: &'a Model<'a>,
        kv: &KvCache<'a>,
        plan: &BatchPlan,
        sparse: Option<&SparseMoe>,
        key: StepKey,
        trace: &[&str],
    ) -> Result<StepGraph<'a>, GgmlError> {
        let n_nodes = graph_size(&model.hp, 1);
        let graph = OwnedGraph::build(graph_context(n_nodes)?, |ctx, _env| {
            let input = |name: &str, ty: GgmlType, ne: &[i64]| -> Tensor<'_> {
                ctx.new_tensor(ty, ne).set_name(name).set_input()
            };
            let n = key.n_tokens as i64;
            let pos = input("inp_pos", GgmlType::I32, &[n]);
            let (full, swa) = seq_attn_inputs(ctx, key.attn, pos, plan, "");
            let inputs = GraphInputs {
                tokens: input("inp_tokens", GgmlType::I32, &[n]),
                out_ids: input("inp_out_ids", GgmlType::I32, &[key.n_outputs as i64]),
                pos,
                seqs: vec![SeqInputs {
                    first: 0,
                    n_tokens: n,
                    kv,
                    full,
                    swa,
                }],
            };
            let mut gf = ctx.new_graph(n_nodes);
            let logits = build(ctx, &mut gf, model, &inputs, sparse).set_output();
            gf.build_forward_expand(logits);
            let mut tensors = vec![logits, inputs.tokens, inputs.out_ids, pos];
            for a in std::iter::once(full).chain(swa) {
                tensors.extend([a.kv_idxs, read_tensor(&a.read)]);
            }
            tensors.extend(trace.iter().filter_map(|n| gf.get_tensor(n)).map(|t| t.set_output()));
            ctx.allocate_graph(&gf)?;
            Ok::<_, GgmlError>(Built { graph: gf, tensors })
        })?;
        Ok(StepGraph {
            key,
            graph,
            has_swa: plan.swa.is_some(),
        })
    }

    /// Sets the batch's inputs: its tokens, the rows whose logits are wanted, the positions from `n_past`, and
    /// the cells of `plan` (which must have this graph's key).
    pub(super) fn set_inputs(
        &self,
        tokens: &[u32],
        out_rows: &[i32],
        n_past: u32,
        plan: &BatchPlan,
    ) -> Result<(), GgmlError> {
        let g = &self.graph;
        let tok: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
        g.tensor(TOKENS).set_i32(&tok)?;
        g.tensor(OUT_IDS).set_i32(out_rows)?;
        let positions: Vec<i32> = (n_past..n_past + tokens.len() as u32).map(|p| p as i32).collect();
        g.tensor(POS).set_i32(&positions)?;
        for (i, cells) in std::iter::once(&plan.full).chain(plan.swa.as_ref()).enumerate() {
            let (idxs, read) = (g.tensor(CELLS + 2 * i), g.tensor(CELLS + 2 * i + 1));
            idxs.set_i64(&cells.idxs)?;
            set_read(self.key.attn, read, cells)?;
        }
        Ok(())
    }

    pub(super) fn compute(&self, backend: &crate::ggml::CpuBackend) -> Result<(), GgmlError> {
        self.graph.graph().compute_with_backend(backend)
    }

    /// The kept traced tensors (contiguous ones: strided views are skipped), after a compute.
    pub(super) fn traced(&self) -> impl Iterator<Item = Tensor<'_>> + '_ {
        let first = CELLS + 2 * (1 + usize::from(self.has_swa));
        (first..self.graph.n_tensors())
            .map(|i| self.graph.tensor(i))
            .filter(|t| t.is_contiguous())
    }

    /// `[n_vocab, n_outputs]` logits, after a compute.
    pub(super) fn logits(&self) -> Result<Vec<f32>, GgmlError> {
        self.graph.tensor(LOGITS).to_f32_vec()
    }
}

/// A `no_alloc` compute context with room for a graph of `n_nodes` nodes and their tensors.
pub(super) fn graph_context(n_nodes: usize) -> Result<Context, GgmlError> {
    Context::new(ContextParams {
        mem_size: 2 * n_nodes * Context::tensor_overhead() + Context::graph_overhead(n_nodes),
        no_alloc: true,
    })
}

/// The attention inputs of one sequence (full layers, SWA layers) for a graph being built in `ctx`: `pos` are
/// its rows' positions, `tag` tells the input names of several sequences apart.
pub(super) fn seq_attn_inputs<'c>(
    ctx: &'c Context,
    kernel: AttnKernel,
    pos: Tensor<'c>,
    plan: &BatchPlan,
    tag: &str,
) -> (AttnInputs<'c>, Option<AttnInputs<'c>>) {
    let n = pos.ne()[0];
    let input =
        |name: String, ty: GgmlType, ne: &[i64]| -> Tensor<'c> { ctx.new_tensor(ty, ne).set_name(&name).set_input() };
    let attn_inputs = |kind: &str, cells: &BatchCells| AttnInputs {
        pos,
        kv_idxs: input(format!("kv_idxs_{kind}{tag}"), GgmlType::I64, &[n]),
        read: match kernel {
            AttnKernel::SoftMax => KvRead::Mask(input(format!("kq_mask_{kind}{tag}"), GgmlType::F32, &[cells.n_kv, n])),
            AttnKernel::Flash => {
                KvRead::FlashMask(input(format!("kq_mask_{kind}{tag}"), GgmlType::F16, &[cells.n_kv, n]))
            }
            AttnKernel::Cells => KvRead::Cells {
                cell_pos: input(format!("cell_pos_{kind}{tag}"), GgmlType::I32, &[cells.n_kv]),
                n_swa: cells.n_swa,
            },
        },
    };
    (
        attn_inputs("full", &plan.full),
        plan.swa.as_ref().map(|s| attn_inputs("swa", s)),
    )
}

/// Fills the cell inputs of one sequence (after the graph is allocated) from the cache's plan for it.
pub(super) fn set_seq_inputs(seq: &SeqInputs<'_, '_>, plan: &BatchPlan) -> Result<(), GgmlError> {
    for (inp, cells) in [(Some(seq.full), Some(&plan.full)), (seq.swa, plan.swa.as_ref())] {
        if let (Some(inp), Some(cells)) = (inp, cells) {
            inp.kv_idxs.set_i64(&cells.idxs)?;
            let kernel = match inp.read {
                KvRead::Mask(_) => AttnKernel::SoftMax,
                KvRead::FlashMask(_) => AttnKernel::Flash,
                KvRead::Cells { .. } => AttnKernel::Cells,
            };
            set_read(kernel, read_tensor(&inp.read), cells)?;
        }
    }
    Ok(())
}

/// The input tensor behind what the attention reads.
fn read_tensor<'c>(read: &KvRead<'c>) -> Tensor<'c> {
    match *read {
        KvRead::Mask(m) | KvRead::FlashMask(m) => m,
        KvRead::Cells { cell_pos, .. } => cell_pos,
    }
}

/// Fills what the attention of `kernel` reads: the cells' positions, or the mask built from them.
fn set_read(kernel: AttnKernel, t: Tensor<'_>, cells: &BatchCells) -> Result<(), GgmlError> {
    match kernel {
        AttnKernel::SoftMax => t.set_f32(&cells.mask()),
        AttnKernel::Flash => t.set_f32_as_f16(&cells.mask()),
        AttnKernel::Cells => t.set_i32(&cells.cell_pos),
    }
}
