//! Matrices in ggml's repacked layout (`crate::ggml::repackable`): attention projections, router and output,
//! and optionally the experts, move into a CPU_REPACK buffer, whose interleaved layout multiplies eight rows at
//! a time, and their mapped pages are released, so the process holds one copy of each (llama.cpp keeps both).
//! Their products run our 8-row kernels (`ggml::q4x8_gemm`): dense ones through `graph::linear`, experts
//! through the sparse expert op (`graph::sparse_batched`), or ggml's mul_mat_id with `--dense`; the expert
//! cache reads the file's layout and interleaves its slots itself.

use super::{LayerWeights, LoadError, Model};
use crate::ggml::{repackable, Context, Tensor};

impl<'w> Model<'w> {
    /// This model with every repackable dense matrix (and with `experts`, every expert tensor) in a CPU_REPACK
    /// buffer of `ctx` (a `no_alloc` context with
    /// room for them, e.g. another [`Model::context`]); returns it and the bytes moved (0 when ggml has no repacked
    /// form here, e.g. for Q8_0 or F32 files or without AVX2: then the tensors are the mapped ones).
    pub fn repacked<'r>(&self, ctx: &'r Context, experts: bool) -> Result<(Model<'r>, u64), LoadError>
    where
        'w: 'r,
    {
        // Experts ([n_embd, n_ff, n_expert]) repack as n_expert stacked matrices, for ggml's mul_mat_id.
        let eligible = |t: Tensor<'_>| repackable(t.ty(), &t.ne()[..2]) && t.ne()[3] == 1;
        // Every dense matrix a mul_mat reads: (original, copy in ctx).
        let mut moved: Vec<(Tensor<'w>, Tensor<'r>)> = Vec::new();
        let mut copy = |t: Tensor<'w>| -> Tensor<'r> {
            if !eligible(t) {
                return t;
            }
            let ne = t.ne();
            let dims = if ne[2] > 1 { &ne[..3] } else { &ne[..2] };
            let c = ctx.new_tensor(t.ty(), dims).set_name(&t.name());
            moved.push((t, c));
            c
        };
        let mut layers: Vec<LayerWeights<'r>> = Vec::with_capacity(self.layers.len());
        for l in &self.layers {
            let mut n: LayerWeights<'r> = *l;
            n.attn.wq = copy(l.attn.wq);
            n.attn.wk = copy(l.attn.wk);
            n.attn.wv = copy(l.attn.wv);
            n.attn.wo = copy(l.attn.wo);
            n.ffn_gate_inp = copy(l.ffn_gate_inp);
            if experts {
                n.experts.gate_exps = copy(l.experts.gate_exps);
                n.experts.up_exps = copy(l.experts.up_exps);
                n.experts.down_exps = copy(l.experts.down_exps);
            }
            layers.push(n);
        }
        // Tied: the embedding stays mapped for get_rows and the lm_head gets its own repacked copy.
        let output = copy(self.output);
        if moved.is_empty() || !ctx.alloc_repack_buffer()? {
            return Ok((self.reborrow(), 0));
        }
        let mut bytes = 0u64;
        for (orig, c) in &moved {
            let name = orig.name();
            let info = self
                .file
                .tensor(&name)
                .expect("a loaded model's tensors are in its file");
            c.set_repacked(self.file.tensor_data(info))?;
            bytes += info.size;
            // At once, so that the map and the copy never both hold the model. Tied: the embedding's pages go
            // too; get_rows faults back only the rows of the tokens it reads. Only memory: a kernel refusing the
            // advice leaves the pages resident.
            let _ = self.file.release(&[info]);
        }
        let mut m = self.reborrow();
        m.layers = layers;
        m.output = output;
        Ok((m, bytes))
    }

    /// The dense (non-expert) weights the graph reads through the file's map, by name: what a memory budget
    /// must keep resident. The embedding counts only when it is also the output matrix: get_rows touches just
    /// the rows of the tokens seen.
    pub fn mapped_dense(&self) -> Vec<String> {
        let mut v: Vec<Tensor<'_>> = vec![self.output_norm, self.output];
        for l in &self.layers {
            v.extend([
                l.attn_norm,
                l.attn.wq,
                l.attn.wk,
                l.attn.wv,
                l.attn.wo,
                l.ffn_norm,
                l.ffn_gate_inp,
            ]);
        }
        v.into_iter().filter(|t| t.is_borrowed()).map(|t| t.name()).collect()
    }

    /// The same tensors with a shorter lifetime.
    fn reborrow<'r>(&self) -> Model<'r>
    where
        'w: 'r,
    {
        Model {
            hp: self.hp.clone(),
            tok_embd: self.tok_embd,
            output_norm: self.output_norm,
            output: self.output,
            tied: self.tied,
            layers: self.layers.clone(),
            file: self.file,
        }
    }
}
