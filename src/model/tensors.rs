//! The SmallThinker weight table: every tensor declared once with its GGUF name, its expected ggml shape and
//! what it is used for, in llama.cpp's `create_tensor` order (`llama_model_smallthinker::load_arch_tensors`).
//! [`validate`] checks a file's tensor list against it before anything touches ggml.

use std::collections::HashMap;

use super::{Hparams, ModelError};
use crate::gguf::{GgmlType, GgufFile};

/// One SmallThinker weight. Per-layer weights carry the layer index `il`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Weight {
    TokenEmbd,
    OutputNorm,
    /// Optional: when absent the output projection is tied to `token_embd` (the 4B).
    Output,
    AttnNorm(u32),
    AttnQ(u32),
    AttnK(u32),
    AttnV(u32),
    AttnOutput(u32),
    FfnNorm(u32),
    /// The router, applied to the raw layer input.
    FfnGateInp(u32),
    FfnGateExps(u32),
    FfnUpExps(u32),
    FfnDownExps(u32),
}

/// How a weight is used, which decides the storage types that work for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorKind {
    /// RMSNorm weight, multiplied element-wise (`ggml_mul`).
    Norm,
    /// Rows looked up by token (`ggml_get_rows`), and the tied output matrix.
    Embedding,
    /// A `ggml_mul_mat` / `ggml_mul_mat_id` weight.
    Matrix,
}

impl Weight {
    /// The GGUF tensor name, e.g. `blk.3.ffn_gate_inp.weight`.
    pub fn name(self) -> String {
        let (base, il) = match self {
            Weight::TokenEmbd => return "token_embd.weight".into(),
            Weight::OutputNorm => return "output_norm.weight".into(),
            Weight::Output => return "output.weight".into(),
            Weight::AttnNorm(il) => ("attn_norm", il),
            Weight::AttnQ(il) => ("attn_q", il),
            Weight::AttnK(il) => ("attn_k", il),
            Weight::AttnV(il) => ("attn_v", il),
            Weight::AttnOutput(il) => ("attn_output", il),
            Weight::FfnNorm(il) => ("ffn_norm", il),
            Weight::FfnGateInp(il) => ("ffn_gate_inp", il),
            Weight::FfnGateExps(il) => ("ffn_gate_exps", il),
            Weight::FfnUpExps(il) => ("ffn_up_exps", il),
            Weight::FfnDownExps(il) => ("ffn_down_exps", il),
        };
        format!("blk.{il}.{base}.weight")
    }

    /// The expected ggml shape (`ne`, innermost first), as llama.cpp's create_tensor calls declare it.
    pub fn ne(self, hp: &Hparams) -> Vec<u64> {
        let n_embd = u64::from(hp.n_embd);
        let n_vocab = u64::from(hp.n_vocab);
        let n_embd_q = u64::from(hp.n_embd_q());
        let n_embd_gqa = u64::from(hp.n_embd_k_gqa());
        let n_ff_exp = u64::from(hp.n_ff_exp);
        let n_expert = u64::from(hp.n_expert);
        match self {
            Weight::TokenEmbd | Weight::Output => vec![n_embd, n_vocab],
            Weight::OutputNorm | Weight::AttnNorm(_) | Weight::FfnNorm(_) => vec![n_embd],
            Weight::AttnQ(_) => vec![n_embd, n_embd_q],
            Weight::AttnK(_) | Weight::AttnV(_) => vec![n_embd, n_embd_gqa],
            Weight::AttnOutput(_) => vec![n_embd_q, n_embd],
            Weight::FfnGateInp(_) => vec![n_embd, n_expert],
            Weight::FfnGateExps(_) | Weight::FfnUpExps(_) => vec![n_embd, n_ff_exp, n_expert],
            Weight::FfnDownExps(_) => vec![n_ff_exp, n_embd, n_expert],
        }
    }

    pub fn kind(self) -> TensorKind {
        match self {
            Weight::OutputNorm | Weight::AttnNorm(_) | Weight::FfnNorm(_) => TensorKind::Norm,
            Weight::TokenEmbd => TensorKind::Embedding,
            _ => TensorKind::Matrix,
        }
    }

    /// Whether a file must contain it (only `output` may be absent).
    pub fn required(self) -> bool {
        self != Weight::Output
    }

    /// The weights of layer `il`, in create_tensor order.
    pub fn layer(il: u32) -> [Weight; 10] {
        [
            Weight::AttnNorm(il),
            Weight::AttnQ(il),
            Weight::AttnK(il),
            Weight::AttnV(il),
            Weight::AttnOutput(il),
            Weight::FfnNorm(il),
            Weight::FfnGateInp(il),
            Weight::FfnGateExps(il),
            Weight::FfnDownExps(il),
            Weight::FfnUpExps(il),
        ]
    }
}

/// One row of the declared table.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorSpec {
    pub weight: Weight,
    pub name: String,
    pub ne: Vec<u64>,
}

/// Every weight of a model with these hyperparameters: 3 + 10 per layer, `output` included.
pub fn table(hp: &Hparams) -> Vec<TensorSpec> {
    let globals = [Weight::TokenEmbd, Weight::OutputNorm, Weight::Output];
    let layers = (0..hp.n_layer).flat_map(Weight::layer);
    globals
        .into_iter()
        .chain(layers)
        .map(|weight| TensorSpec {
            weight,
            name: weight.name(),
            ne: weight.ne(hp),
        })
        .collect()
}

/// One tensor as a file declares it.
#[derive(Clone, Copy, Debug)]
pub struct FileTensor<'a> {
    pub name: &'a str,
    /// ggml order; trailing 1s are ignored (llama.cpp treats missing trailing dims as 1).
    pub ne: &'a [u64],
    pub ty: GgmlType,
}

/// Types with a CPU `vec_dot` kernel in the vendored ggml (`type_traits_cpu` in ggml-cpu.c): what
/// `ggml_mul_mat` and `ggml_get_rows` accept as the weight. Q8_1 and Q8_K are activation-only formats there; the
/// integer and f64 types have no kernel at all.
pub fn cpu_can_mul_mat(ty: GgmlType) -> bool {
    use GgmlType::*;
    !matches!(ty, Q8_1 | Q8_K | I8 | I16 | I32 | I64 | F64)
}

fn check_type(spec: &TensorSpec, ty: GgmlType) -> Result<(), ModelError> {
    let reason = match spec.weight.kind() {
        // llama.cpp's converter and quantizer always keep 1-D tensors in F32, and our graph multiplies them
        // into F32 activations as they are.
        TensorKind::Norm if ty != GgmlType::F32 => "norm weights must be F32",
        TensorKind::Embedding | TensorKind::Matrix if !cpu_can_mul_mat(ty) => {
            "the ggml CPU backend has no matrix kernel for this type"
        }
        _ => return Ok(()),
    };
    Err(ModelError::UnsupportedType {
        name: spec.name.clone(),
        ty,
        reason,
    })
}

fn trimmed(ne: &[u64]) -> &[u64] {
    let keep = ne.iter().rposition(|&d| d != 1).map_or(0, |i| i + 1);
    &ne[..keep]
}

/// Checks a file's tensors against the table: first every declared weight (missing, then shape, then type, in
/// table order), then anything left over. The first problem found is returned.
pub fn validate<'a>(table: &[TensorSpec], file: impl IntoIterator<Item = FileTensor<'a>>) -> Result<(), ModelError> {
    let file: HashMap<&str, FileTensor<'a>> = file.into_iter().map(|t| (t.name, t)).collect();
    for spec in table {
        let Some(t) = file.get(spec.name.as_str()) else {
            if spec.weight.required() {
                return Err(ModelError::MissingTensor {
                    name: spec.name.clone(),
                });
            }
            continue;
        };
        if trimmed(t.ne) != trimmed(&spec.ne) {
            return Err(ModelError::ShapeMismatch {
                name: spec.name.clone(),
                expected: spec.ne.clone(),
                got: t.ne.to_vec(),
            });
        }
        check_type(spec, t.ty)?;
    }
    let mut extra: Vec<&str> = file
        .keys()
        .copied()
        .filter(|n| !table.iter().any(|s| s.name == *n))
        .collect();
    extra.sort_unstable();
    if let Some(name) = extra.first() {
        return Err(ModelError::UnexpectedTensor { name: name.to_string() });
    }
    Ok(())
}

/// [`validate`] of a GGUF file's tensors against the table for `hp`.
pub fn validate_file(hp: &Hparams, f: &GgufFile) -> Result<(), ModelError> {
    let file = f.tensors().iter().map(|t| FileTensor {
        name: &t.name,
        ne: &t.dims,
        ty: t.ty,
    });
    validate(&table(hp), file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Gating;

    fn hp() -> Hparams {
        Hparams {
            n_layer: 2,
            n_ctx_train: 4096,
            n_embd: 64,
            n_ff: None,
            n_head: 4,
            n_head_kv: 2,
            n_embd_head_k: 32,
            n_embd_head_v: 32,
            rope_freq_base: 1e4,
            rope_freq_base_swa: 1e4,
            rms_norm_eps: 1e-6,
            n_expert: 4,
            n_expert_used: 2,
            n_ff_exp: 96,
            gating: Gating::Sigmoid,
            swa: None,
            n_vocab: 1000,
        }
    }

    struct Owned(Vec<(String, Vec<u64>, GgmlType)>);

    impl Owned {
        fn from_table(t: &[TensorSpec]) -> Self {
            Owned(
                t.iter()
                    .map(|s| (s.name.clone(), s.ne.clone(), GgmlType::F32))
                    .collect(),
            )
        }
        fn view(&self) -> impl Iterator<Item = FileTensor<'_>> {
            self.0.iter().map(|(n, ne, ty)| FileTensor { name: n, ne, ty: *ty })
        }
        fn find(&mut self, name: &str) -> &mut (String, Vec<u64>, GgmlType) {
            self.0.iter_mut().find(|t| t.0 == name).unwrap()
        }
    }

    #[test]
    fn table_matches_llama_cpp_create_tensor() {
        let t = table(&hp());
        assert_eq!(t.len(), 3 + 10 * 2);
        let ne = |name: &str| t.iter().find(|s| s.name == name).unwrap().ne.clone();
        assert_eq!(ne("token_embd.weight"), [64, 1000]);
        assert_eq!(ne("output.weight"), [64, 1000]);
        assert_eq!(ne("output_norm.weight"), [64]);
        assert_eq!(ne("blk.1.attn_norm.weight"), [64]);
        assert_eq!(ne("blk.1.attn_q.weight"), [64, 128]);
        assert_eq!(ne("blk.1.attn_k.weight"), [64, 64]);
        assert_eq!(ne("blk.1.attn_v.weight"), [64, 64]);
        assert_eq!(ne("blk.1.attn_output.weight"), [128, 64]);
        assert_eq!(ne("blk.1.ffn_norm.weight"), [64]);
        assert_eq!(ne("blk.1.ffn_gate_inp.weight"), [64, 4]);
        assert_eq!(ne("blk.1.ffn_gate_exps.weight"), [64, 96, 4]);
        assert_eq!(ne("blk.1.ffn_up_exps.weight"), [64, 96, 4]);
        assert_eq!(ne("blk.1.ffn_down_exps.weight"), [96, 64, 4]);
        assert!(t.iter().all(|s| s.weight.name() == s.name));
    }

    #[test]
    fn a_complete_file_passes_with_or_without_output() {
        let t = table(&hp());
        let mut f = Owned::from_table(&t);
        validate(&t, f.view()).unwrap();
        f.0.retain(|x| x.0 != "output.weight");
        validate(&t, f.view()).unwrap();
    }

    #[test]
    fn trailing_unit_dims_are_ignored() {
        let t = table(&hp());
        let mut f = Owned::from_table(&t);
        f.find("blk.0.attn_norm.weight").1 = vec![64, 1, 1];
        validate(&t, f.view()).unwrap();
    }

    #[test]
    fn each_problem_gets_its_own_error() {
        let t = table(&hp());
        let mut f = Owned::from_table(&t);
        f.0.retain(|x| x.0 != "blk.1.ffn_up_exps.weight");
        assert_eq!(
            validate(&t, f.view()),
            Err(ModelError::MissingTensor {
                name: "blk.1.ffn_up_exps.weight".into()
            })
        );

        let mut f = Owned::from_table(&t);
        f.find("blk.0.ffn_down_exps.weight").1 = vec![64, 96, 4];
        assert_eq!(
            validate(&t, f.view()),
            Err(ModelError::ShapeMismatch {
                name: "blk.0.ffn_down_exps.weight".into(),
                expected: vec![96, 64, 4],
                got: vec![64, 96, 4],
            })
        );

        let mut f = Owned::from_table(&t);
        f.0.push(("rope_freqs.weight".into(), vec![16], GgmlType::F32));
        assert_eq!(
            validate(&t, f.view()),
            Err(ModelError::UnexpectedTensor {
                name: "rope_freqs.weight".into()
            })
        );

        let mut f = Owned::from_table(&t);
        f.find("blk.0.attn_q.weight").2 = GgmlType::Q8_K;
        assert!(matches!(
            validate(&t, f.view()),
            Err(ModelError::UnsupportedType { name, ty: GgmlType::Q8_K, .. }) if name == "blk.0.attn_q.weight"
        ));

        let mut f = Owned::from_table(&t);
        f.find("output_norm.weight").2 = GgmlType::F16;
        assert!(matches!(
            validate(&t, f.view()),
            Err(ModelError::UnsupportedType { name, ty: GgmlType::F16, .. }) if name == "output_norm.weight"
        ));
    }

    #[test]
    fn quantized_matrices_are_accepted() {
        let t = table(&hp());
        let mut f = Owned::from_table(&t);
        for (name, _, ty) in &mut f.0 {
            if !name.contains("norm") {
                *ty = if name.contains("exps") {
                    GgmlType::Q4_0
                } else {
                    GgmlType::Q6_K
                };
            }
        }
        validate(&t, f.view()).unwrap();
        assert!(!cpu_can_mul_mat(GgmlType::I32));
        assert!(cpu_can_mul_mat(GgmlType::BF16));
    }
}
