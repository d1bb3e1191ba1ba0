//! Loading: a SmallThinker GGUF's weights as ggml tensors that point straight into the memory map.
//!
//! Everything is checked before ggml sees it: the hyperparameters ([`Hparams::from_gguf`]) and every tensor's
//! name, shape and type against the declared table ([`tensors::validate_file`]). The weights live in a
//! caller-owned `no_alloc` context ([`Model::context`]); the [`Model`] borrows it and the [`GgufFile`], so no
//! tensor can outlive the mapping.

use super::{tensors, Hparams, ModelError, Weight};
use crate::ggml::{Context, ContextParams, GgmlError, Tensor};
use crate::gguf::{GgufError, GgufFile};
use crate::graph::{AttnWeights, MoeWeights};

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// The file is not a SmallThinker model this crate can run (`error` names the key or tensor).
    #[error("{path}: {error}")]
    Model { path: String, error: ModelError },
    #[error(transparent)]
    Ggml(#[from] GgmlError),
}

/// The weights of one layer.
#[derive(Clone, Copy)]
pub struct LayerWeights<'w> {
    /// `[n_embd]`
    pub attn_norm: Tensor<'w>,
    pub attn: AttnWeights<'w>,
    /// `[n_embd]`
    pub ffn_norm: Tensor<'w>,
    /// The router, `[n_embd, n_expert]`.
    pub ffn_gate_inp: Tensor<'w>,
    pub experts: MoeWeights<'w>,
}

/// A loaded model: hyperparameters and weight tensors borrowing the weights context and the file's map.
pub struct Model<'w> {
    pub hp: Hparams,
    /// `[n_embd, n_vocab]`
    pub tok_embd: Tensor<'w>,
    /// `[n_embd]`
    pub output_norm: Tensor<'w>,
    /// `[n_embd, n_vocab]`: `output.weight`, or `tok_embd` when the file has none (tied embeddings).
    pub output: Tensor<'w>,
    pub tied: bool,
    pub layers: Vec<LayerWeights<'w>>,
    /// The file the weights point into (the expert cache reads from it).
    pub file: &'w GgufFile,
}

impl<'w> Model<'w> {
    /// A `no_alloc` context with room for the metadata of every tensor of `file`.
    pub fn context(file: &GgufFile) -> Result<Context, GgmlError> {
        Context::new(ContextParams {
            mem_size: (file.tensors().len() + 1) * Context::tensor_overhead(),
            no_alloc: true,
        })
    }

    /// Weight bytes one decode step reads when every matrix it uses is read whole: each layer's attention,
    /// norms, router and `n_expert_used` experts (gate, up and down), the output norm and matrix, and one row of
    /// the embedding. The memory-bandwidth roofline of decode divides the read bandwidth by this.
    pub fn decode_weight_bytes(&self) -> u64 {
        let n = |t: Tensor<'_>| t.nbytes() as u64;
        let (k, e) = (u64::from(self.hp.n_expert_used), u64::from(self.hp.n_expert.max(1)));
        let layers: u64 = self
            .layers
            .iter()
            .map(|l| {
                let (a, x) = (&l.attn, &l.experts);
                let dense = n(l.attn_norm) + n(a.wq) + n(a.wk) + n(a.wv) + n(a.wo) + n(l.ffn_norm) + n(l.ffn_gate_inp);
                dense + k * (n(x.gate_exps) + n(x.up_exps) + n(x.down_exps)) / e
            })
            .sum();
        layers + n(self.output_norm) + n(self.output) + n(self.tok_embd) / u64::from(self.hp.n_vocab.max(1))
    }

    /// Reads the hyperparameters, validates every tensor against the declared table, and creates the weight
    /// tensors in `ctx` (from [`Model::context`]) over the file's bytes, without copying.
    pub fn load(ctx: &'w Context, file: &'w GgufFile) -> Result<Model<'w>, LoadError> {
        let model_err = |error| LoadError::Model {
            path: file.path().display().to_string(),
            error,
        };
        let hp = Hparams::from_gguf(file).map_err(model_err)?;
        tensors::validate_file(&hp, file).map_err(model_err)?;
        let get = |w: Weight| -> Result<Option<Tensor<'w>>, LoadError> {
            let name = w.name();
            let Some(info) = file.tensor(&name) else {
                return Ok(None);
            };
            // The declared shape (validated equal up to trailing 1s), so every tensor has its graph rank.
            let ne: Vec<i64> = w.ne(&hp).iter().map(|&d| d as i64).collect();
            Ok(Some(ctx.new_tensor_from_bytes(
                &name,
                info.ty,
                &ne,
                file.tensor_data(info),
            )?))
        };
        // validate_file guarantees every required weight is present.
        let req = |w: Weight| get(w).map(|t| t.expect("validated: required weight present"));
        let layers = (0..hp.n_layer)
            .map(|il| {
                Ok(LayerWeights {
                    attn_norm: req(Weight::AttnNorm(il))?,
                    attn: AttnWeights {
                        wq: req(Weight::AttnQ(il))?,
                        wk: req(Weight::AttnK(il))?,
                        wv: req(Weight::AttnV(il))?,
                        wo: req(Weight::AttnOutput(il))?,
                    },
                    ffn_norm: req(Weight::FfnNorm(il))?,
                    ffn_gate_inp: req(Weight::FfnGateInp(il))?,
                    experts: MoeWeights {
                        gate_exps: req(Weight::FfnGateExps(il))?,
                        up_exps: req(Weight::FfnUpExps(il))?,
                        down_exps: req(Weight::FfnDownExps(il))?,
                    },
                })
            })
            .collect::<Result<Vec<_>, LoadError>>()?;
        let tok_embd = req(Weight::TokenEmbd)?;
        let output = get(Weight::Output)?;
        Ok(Model {
            tok_embd,
            output_norm: req(Weight::OutputNorm)?,
            output: output.unwrap_or(tok_embd),
            tied: output.is_none(),
            layers,
            hp,
            file,
        })
    }
}
