//! SmallThinker hyperparameters, as llama.cpp reads them (`llama_model_smallthinker::load_arch_hparams` and the
//! base `load_hparams`), plus the per-layer policy (RoPE/NoPE, SWA) that the GGUF does not store per layer.

use super::ModelError;
use crate::gguf::{GgufFile, Value};

/// The sliding window llama.cpp uses whenever `attention.sliding_window` is set: it hard-codes 4096 and ignores
/// the file's value (smallthinker.cpp, load_arch_hparams). We honour the file's value (the released 21B stores
/// 4096) and warn at load when it differs, because llama.cpp's outputs then diverge past this many tokens.
pub const N_SWA: u32 = 4096;
/// SWA layer period with the dense (full-attention) layer first: layer `il` is SWA iff `il % 4 != 0`.
pub const SWA_PATTERN: u32 = 4;
/// llama.cpp's default `n_no_rope_layer_step`: with SWA on, layers `il % 4 == 0` skip RoPE (NoPE).
pub const NO_ROPE_LAYER_STEP: u32 = 4;
/// `build_moe_ffn` divides the selected expert weights by `max(sum, this)` (the smallest normal f16).
pub const WEIGHTS_SUM_MIN: f32 = 1.0 / 16384.0; // 2^-14 = 6.103515625e-5
/// `LLAMA_MAX_EXPERTS` in the vendored llama.cpp (llama-hparams.h).
const MAX_EXPERTS: u32 = 1024;

/// The GGUF metadata keys, spelled as llama.cpp spells them for `general.architecture = "smallthinker"`.
pub mod keys {
    pub const ARCHITECTURE: &str = "general.architecture";
    pub const BLOCK_COUNT: &str = "smallthinker.block_count";
    pub const CONTEXT_LENGTH: &str = "smallthinker.context_length";
    pub const EMBEDDING_LENGTH: &str = "smallthinker.embedding_length";
    pub const FEED_FORWARD_LENGTH: &str = "smallthinker.feed_forward_length";
    pub const HEAD_COUNT: &str = "smallthinker.attention.head_count";
    pub const HEAD_COUNT_KV: &str = "smallthinker.attention.head_count_kv";
    pub const KEY_LENGTH: &str = "smallthinker.attention.key_length";
    pub const VALUE_LENGTH: &str = "smallthinker.attention.value_length";
    pub const RMS_EPS: &str = "smallthinker.attention.layer_norm_rms_epsilon";
    pub const SLIDING_WINDOW: &str = "smallthinker.attention.sliding_window";
    pub const SLIDING_WINDOW_PATTERN: &str = "smallthinker.attention.sliding_window_pattern";
    pub const ROPE_FREQ_BASE: &str = "smallthinker.rope.freq_base";
    pub const ROPE_FREQ_BASE_SWA: &str = "smallthinker.rope.freq_base_swa";
    pub const ROPE_DIMENSION_COUNT: &str = "smallthinker.rope.dimension_count";
    pub const ROPE_SCALING_TYPE: &str = "smallthinker.rope.scaling.type";
    pub const ROPE_SCALING_FACTOR: &str = "smallthinker.rope.scaling.factor";
    pub const EXPERT_COUNT: &str = "smallthinker.expert_count";
    pub const EXPERT_USED_COUNT: &str = "smallthinker.expert_used_count";
    pub const EXPERT_FEED_FORWARD_LENGTH: &str = "smallthinker.expert_feed_forward_length";
    pub const EXPERT_GATING_FUNC: &str = "smallthinker.expert_gating_func";
    pub const TOKENS: &str = "tokenizer.ggml.tokens";
}

/// How router logits become expert weights (`expert_gating_func`; llama.cpp's enum values).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gating {
    /// 1: softmax over all experts, then top-k, then renormalise (the 21B).
    Softmax,
    /// 2: sigmoid of every logit, then top-k, then renormalise (the 4B).
    Sigmoid,
}

impl Gating {
    /// The `expert_gating_func` value for this gating.
    pub fn id(self) -> u32 {
        match self {
            Gating::Softmax => 1,
            Gating::Sigmoid => 2,
        }
    }

    /// The gating for an `expert_gating_func` value. 0 (llama.cpp's NONE, what an absent key means there) and
    /// 3 (SOFTMAX_WEIGHT, another architecture's) are not SmallThinker gatings.
    pub fn from_id(id: u32) -> Option<Gating> {
        match id {
            1 => Some(Gating::Softmax),
            2 => Some(Gating::Sigmoid),
            _ => None,
        }
    }
}

/// What the MoE block needs, as one value instead of `build_moe_ffn`'s positional flags. SmallThinker always
/// uses ReGLU experts (`relu(gate) * up`), renormalised weights and no weight scale.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MoeParams {
    pub n_expert: u32,
    pub n_expert_used: u32,
    pub n_ff_exp: u32,
    pub gating: Gating,
    /// Lower bound of the sum the selected weights are divided by ([`WEIGHTS_SUM_MIN`]).
    pub weights_sum_min: f32,
}

/// Everything the SmallThinker graph needs from the GGUF metadata, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct Hparams {
    pub n_layer: u32,
    /// `context_length`: the training context. Informational (no YaRN), but llama.cpp requires it.
    pub n_ctx_train: u32,
    pub n_embd: u32,
    /// `feed_forward_length`, if present. The graph has no dense FFN and uses `n_ff_exp`.
    pub n_ff: Option<u32>,
    pub n_head: u32,
    pub n_head_kv: u32,
    /// `key_length`, default `n_embd / n_head`; must equal `value_length` (llama.cpp's graph asserts it).
    pub n_embd_head_k: u32,
    pub n_embd_head_v: u32,
    /// `rope.freq_base`, default 10000.
    pub rope_freq_base: f32,
    /// `rope.freq_base_swa` for the SWA layers, default `rope_freq_base`.
    pub rope_freq_base_swa: f32,
    pub rms_norm_eps: f32,
    pub n_expert: u32,
    pub n_expert_used: u32,
    pub n_ff_exp: u32,
    pub gating: Gating,
    /// `attention.sliding_window` when present and > 0: SWA with this window on layers `il % 4 != 0`, NoPE on
    /// the rest. The released 21B stores [`N_SWA`]; llama.cpp uses 4096 whatever the file says.
    pub swa: Option<u32>,
    /// Length of `tokenizer.ggml.tokens`.
    pub n_vocab: u32,
}

impl Hparams {
    /// Head size (key and value sizes are equal once validated).
    pub fn n_embd_head(&self) -> u32 {
        self.n_embd_head_k
    }

    /// Query heads per KV head.
    pub fn n_gqa(&self) -> u32 {
        self.n_head / self.n_head_kv
    }

    /// Width of Q and of the attention output, `n_embd_head * n_head` (3584 != n_embd for the 21B).
    pub fn n_embd_q(&self) -> u32 {
        self.n_embd_head_k * self.n_head
    }

    /// Width of K and V, `n_embd_head * n_head_kv`.
    pub fn n_embd_k_gqa(&self) -> u32 {
        self.n_embd_head_k * self.n_head_kv
    }

    /// Rotary dimensions: the whole head (llama.cpp defaults `rope.dimension_count` to `key_length`).
    pub fn n_rot(&self) -> u32 {
        self.n_embd_head_k
    }

    /// Whether layer `il` applies RoPE. Without SWA every layer does; with SWA, layers `il % 4 == 0` are NoPE.
    ///
    /// llama.cpp's predicate is `n_no_rope_layer_step == n_layer || il % n_no_rope_layer_step != 0`, and
    /// "no SWA" is encoded as `n_no_rope_layer_step = n_layer`. So a SWA model with exactly 4 layers gets RoPE
    /// on every layer (HF's layout would make layer 0 NoPE). We follow llama.cpp; no released model has 4 layers.
    pub fn use_rope(&self, il: u32) -> bool {
        self.swa.is_none() || self.n_layer == NO_ROPE_LAYER_STEP || il % NO_ROPE_LAYER_STEP != 0
    }

    /// Whether layer `il` uses sliding-window attention (dense layer first in every group of 4).
    pub fn is_swa(&self, il: u32) -> bool {
        self.swa.is_some() && il % SWA_PATTERN != 0
    }

    /// The sliding window of the SWA layers: a key at `p_k` is masked for a query at `p_q` when
    /// `p_q - p_k >= n_swa`. None when the model has no SWA layer.
    pub fn n_swa(&self) -> Option<u32> {
        self.swa
    }

    /// A one-line warning when the file's window is not the 4096 llama.cpp hard-codes (the tiny model's 64):
    /// llama.cpp loads such a file but its outputs differ from ours once a sequence is longer than the window.
    pub fn swa_warning(&self) -> Option<String> {
        self.swa.filter(|&w| w != N_SWA).map(|w| {
            format!(
                "warning: sliding window {w} from {}; llama.cpp would use {N_SWA}",
                keys::SLIDING_WINDOW
            )
        })
    }

    /// RoPE base of layer `il` (SWA layers may have their own).
    pub fn rope_freq_base(&self, il: u32) -> f32 {
        if self.is_swa(il) {
            self.rope_freq_base_swa
        } else {
            self.rope_freq_base
        }
    }

    pub fn gating(&self) -> Gating {
        self.gating
    }

    pub fn moe(&self) -> MoeParams {
        MoeParams {
            n_expert: self.n_expert,
            n_expert_used: self.n_expert_used,
            n_ff_exp: self.n_ff_exp,
            gating: self.gating,
            weights_sum_min: WEIGHTS_SUM_MIN,
        }
    }

    /// Checks ranges and consistency, naming the key at fault. Everything here would make llama.cpp assert,
    /// fail a shape check or compute something this crate does not implement.
    pub fn validate(&self) -> Result<(), ModelError> {
        use keys::*;
        positive(BLOCK_COUNT, self.n_layer)?;
        positive(EMBEDDING_LENGTH, self.n_embd)?;
        positive(HEAD_COUNT, self.n_head)?;
        positive(HEAD_COUNT_KV, self.n_head_kv)?;
        if self.n_head % self.n_head_kv != 0 {
            return Err(bad(
                HEAD_COUNT_KV,
                self.n_head_kv,
                format!("does not divide head_count {}", self.n_head),
            ));
        }
        positive(KEY_LENGTH, self.n_embd_head_k)?;
        // NEOX RoPE rotates pairs (i, i + n_rot/2): an odd head size has no partner for its last element.
        if self.n_embd_head_k % 2 != 0 {
            return Err(bad(KEY_LENGTH, self.n_embd_head_k, "must be even (RoPE rotates pairs)"));
        }
        if self.n_embd_head_v != self.n_embd_head_k {
            return Err(bad(
                VALUE_LENGTH,
                self.n_embd_head_v,
                format!("must equal key_length {}", self.n_embd_head_k),
            ));
        }
        finite_positive(ROPE_FREQ_BASE, self.rope_freq_base)?;
        finite_positive(ROPE_FREQ_BASE_SWA, self.rope_freq_base_swa)?;
        finite_positive(RMS_EPS, self.rms_norm_eps)?;
        if !(1..=MAX_EXPERTS).contains(&self.n_expert) {
            return Err(bad(
                EXPERT_COUNT,
                self.n_expert,
                format!("must be in 1..={MAX_EXPERTS}"),
            ));
        }
        if !(1..=self.n_expert).contains(&self.n_expert_used) {
            return Err(bad(
                EXPERT_USED_COUNT,
                self.n_expert_used,
                format!("must be in 1..={}", self.n_expert),
            ));
        }
        positive(EXPERT_FEED_FORWARD_LENGTH, self.n_ff_exp)?;
        positive(TOKENS, self.n_vocab)?;
        Ok(())
    }
}

impl Hparams {
    /// Reads and validates the hyperparameters of a SmallThinker GGUF. Types are checked exactly (a u32 key
    /// stored as i32 is `WrongType`, as in llama.cpp's loader); keys this crate does not implement (RoPE scaling,
    /// a non-default SWA pattern) are rejected rather than ignored.
    pub fn from_gguf(f: &GgufFile) -> Result<Hparams, ModelError> {
        use keys::*;
        let kv = Kv(f);
        let arch = kv.req(ARCHITECTURE, "str", |v| v.as_str())?;
        if arch != "smallthinker" {
            return Err(bad(ARCHITECTURE, arch, "not a SmallThinker model"));
        }
        let u32_key = |key| kv.req(key, "u32", Value::as_u32);
        let n_layer = u32_key(BLOCK_COUNT)?;
        let n_ctx_train = u32_key(CONTEXT_LENGTH)?;
        let n_embd = u32_key(EMBEDDING_LENGTH)?;
        let n_ff = kv.opt(FEED_FORWARD_LENGTH, "u32", Value::as_u32)?;
        let n_head = u32_key(HEAD_COUNT)?;
        let n_head_kv = kv.opt(HEAD_COUNT_KV, "u32", Value::as_u32)?.unwrap_or(n_head);
        // llama.cpp's default head size; n_head = 0 is reported by validate().
        let default_head = n_embd.checked_div(n_head).unwrap_or(0);
        let n_embd_head_k = kv.opt(KEY_LENGTH, "u32", Value::as_u32)?.unwrap_or(default_head);
        let n_embd_head_v = kv.opt(VALUE_LENGTH, "u32", Value::as_u32)?.unwrap_or(default_head);
        let rope_freq_base = kv.opt(ROPE_FREQ_BASE, "f32", Value::as_f32)?.unwrap_or(10000.0);
        let rms_norm_eps = kv.req(RMS_EPS, "f32", Value::as_f32)?;
        let n_expert = u32_key(EXPERT_COUNT)?;
        let n_expert_used = u32_key(EXPERT_USED_COUNT)?;
        let n_ff_exp = u32_key(EXPERT_FEED_FORWARD_LENGTH)?;
        // llama.cpp reads an absent key as NONE and aborts when it builds the graph: fail at load instead.
        let gating_id = u32_key(EXPERT_GATING_FUNC)?;
        let gating = Gating::from_id(gating_id)
            .ok_or_else(|| bad(EXPERT_GATING_FUNC, gating_id, "expected 1 (softmax) or 2 (sigmoid)"))?;

        let swa = kv.opt(SLIDING_WINDOW, "u32", Value::as_u32)?.filter(|&w| w > 0);
        let mut rope_freq_base_swa = rope_freq_base;
        if swa.is_some() {
            rope_freq_base_swa = kv
                .opt(ROPE_FREQ_BASE_SWA, "f32", Value::as_f32)?
                .unwrap_or(rope_freq_base);
            // llama.cpp honours a pattern key (scalar or per-layer array); we implement the released pattern only.
            if let Some(v) = f.get(SLIDING_WINDOW_PATTERN) {
                if v.as_u32() != Some(SWA_PATTERN) {
                    return Err(bad(
                        SLIDING_WINDOW_PATTERN,
                        format!("{v:?}"),
                        "only the default pattern 4 is supported",
                    ));
                }
            }
        }
        if let Some(n_rot) = kv.opt(ROPE_DIMENSION_COUNT, "u32", Value::as_u32)? {
            if n_rot != n_embd_head_k {
                return Err(bad(
                    ROPE_DIMENSION_COUNT,
                    n_rot,
                    format!("must equal the head size {n_embd_head_k}"),
                ));
            }
        }
        if let Some(t) = kv.opt(ROPE_SCALING_TYPE, "str", |v| v.as_str())? {
            if t != "none" {
                return Err(bad(ROPE_SCALING_TYPE, t, "RoPE scaling is not supported"));
            }
        }
        if let Some(factor) = kv.opt(ROPE_SCALING_FACTOR, "f32", Value::as_f32)? {
            if factor != 0.0 && factor != 1.0 {
                return Err(bad(ROPE_SCALING_FACTOR, factor, "RoPE scaling is not supported"));
            }
        }

        let tokens = kv.value(TOKENS)?;
        let n_tokens = tokens
            .as_array()
            .filter(|a| a.elem_type() == crate::gguf::ValueType::String)
            .map(|a| a.len());
        let n_tokens = n_tokens.ok_or_else(|| wrong_type(TOKENS, "[str]", tokens))?;
        let n_vocab = u32::try_from(n_tokens).map_err(|_| bad(TOKENS, n_tokens, "too many tokens"))?;

        let hp = Hparams {
            n_layer,
            n_ctx_train,
            n_embd,
            n_ff,
            n_head,
            n_head_kv,
            n_embd_head_k,
            n_embd_head_v,
            rope_freq_base,
            rope_freq_base_swa,
            rms_norm_eps,
            n_expert,
            n_expert_used,
            n_ff_exp,
            gating,
            swa,
            n_vocab,
        };
        hp.validate()?;
        Ok(hp)
    }
}

/// Typed metadata lookups that report the key.
struct Kv<'a>(&'a GgufFile);

impl<'a> Kv<'a> {
    fn value(&self, key: &str) -> Result<&'a Value, ModelError> {
        self.0
            .get(key)
            .ok_or_else(|| ModelError::MissingKey { key: key.to_string() })
    }

    fn opt<T>(
        &self,
        key: &str,
        expected: &'static str,
        get: impl Fn(&'a Value) -> Option<T>,
    ) -> Result<Option<T>, ModelError> {
        match self.0.get(key) {
            None => Ok(None),
            Some(v) => get(v).map(Some).ok_or_else(|| wrong_type(key, expected, v)),
        }
    }

    fn req<T>(&self, key: &str, expected: &'static str, get: impl Fn(&'a Value) -> Option<T>) -> Result<T, ModelError> {
        let v = self.value(key)?;
        get(v).ok_or_else(|| wrong_type(key, expected, v))
    }
}

fn wrong_type(key: &str, expected: &'static str, v: &Value) -> ModelError {
    ModelError::WrongType {
        key: key.to_string(),
        expected,
        got: v.type_label(),
    }
}

fn bad(key: &str, value: impl ToString, reason: impl Into<String>) -> ModelError {
    ModelError::BadValue {
        key: key.to_string(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

fn positive(key: &str, v: u32) -> Result<(), ModelError> {
    if v == 0 {
        return Err(bad(key, v, "must be positive"));
    }
    Ok(())
}

fn finite_positive(key: &str, v: f32) -> Result<(), ModelError> {
    if !(v.is_finite() && v > 0.0) {
        return Err(bad(key, v, "must be finite and positive"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 21B's values (smallthinker-architecture.md §1.1).
    fn hp21b() -> Hparams {
        Hparams {
            n_layer: 52,
            n_ctx_train: 16384,
            n_embd: 2560,
            n_ff: Some(768),
            n_head: 28,
            n_head_kv: 4,
            n_embd_head_k: 128,
            n_embd_head_v: 128,
            rope_freq_base: 1.5e6,
            rope_freq_base_swa: 1.5e6,
            rms_norm_eps: 1e-6,
            n_expert: 64,
            n_expert_used: 6,
            n_ff_exp: 768,
            gating: Gating::Softmax,
            swa: Some(4096),
            n_vocab: 151936,
        }
    }

    fn hp4b() -> Hparams {
        Hparams {
            n_layer: 32,
            n_ctx_train: 32768,
            n_embd: 1536,
            n_head: 12,
            n_head_kv: 2,
            n_expert: 32,
            n_expert_used: 4,
            gating: Gating::Sigmoid,
            swa: None,
            ..hp21b()
        }
    }

    #[test]
    fn layer_policy_21b_matches_the_hf_layouts() {
        let hp = hp21b();
        // HF rope_layout = sliding_window_layout = [0,1,1,1]*13: 0 = NoPE + full attention.
        let nope_full: Vec<u32> = (0..hp.n_layer).filter(|&il| !hp.use_rope(il)).collect();
        assert_eq!(nope_full, (0..13).map(|i| 4 * i).collect::<Vec<_>>());
        for il in 0..hp.n_layer {
            assert_eq!(hp.is_swa(il), hp.use_rope(il), "layer {il}");
        }
        assert_eq!((0..hp.n_layer).filter(|&il| hp.is_swa(il)).count(), 39);
        assert_eq!(hp.n_swa(), Some(4096));
        assert_eq!(hp.n_gqa(), 7);
        assert_eq!(hp.n_embd_q(), 3584);
        assert_eq!(hp.n_embd_k_gqa(), 512);
    }

    #[test]
    fn layer_policy_4b_is_rope_and_full_attention_everywhere() {
        let hp = hp4b();
        assert!((0..hp.n_layer).all(|il| hp.use_rope(il) && !hp.is_swa(il)));
        assert_eq!(hp.n_swa(), None);
        assert_eq!(hp.n_gqa(), 6);
        assert_eq!(hp.n_embd_q(), 1536);
        hp.validate().unwrap();
    }

    #[test]
    fn a_four_layer_swa_model_keeps_rope_everywhere_as_llama_cpp_does() {
        let hp = Hparams { n_layer: 4, ..hp21b() };
        assert!((0..4).all(|il| hp.use_rope(il)));
        assert_eq!(
            (0..4).map(|il| hp.is_swa(il)).collect::<Vec<_>>(),
            [false, true, true, true]
        );
        let hp = Hparams { n_layer: 5, ..hp21b() };
        assert_eq!(
            (0..5).map(|il| hp.use_rope(il)).collect::<Vec<_>>(),
            [false, true, true, true, false]
        );
    }

    #[test]
    fn a_window_other_than_4096_is_honoured_with_a_warning() {
        assert_eq!(hp21b().swa_warning(), None);
        let hp = Hparams {
            swa: Some(64),
            ..hp21b()
        };
        assert_eq!(hp.n_swa(), Some(64));
        assert!(
            hp.swa_warning().unwrap().contains("sliding window 64"),
            "{:?}",
            hp.swa_warning()
        );
        assert_eq!(hp4b().swa_warning(), None);
    }

    #[test]
    fn swa_layers_take_the_swa_rope_base() {
        let hp = Hparams {
            rope_freq_base_swa: 5e4,
            ..hp21b()
        };
        assert_eq!(hp.rope_freq_base(0), 1.5e6);
        assert_eq!(hp.rope_freq_base(1), 5e4);
        assert_eq!(hp.rope_freq_base(4), 1.5e6);
    }

    #[test]
    fn moe_params_and_gating_ids() {
        let m = hp21b().moe();
        assert_eq!(
            (m.n_expert, m.n_expert_used, m.n_ff_exp, m.gating),
            (64, 6, 768, Gating::Softmax)
        );
        assert_eq!(f64::from(m.weights_sum_min), 6.103515625e-5);
        assert_eq!(Gating::from_id(1), Some(Gating::Softmax));
        assert_eq!(Gating::from_id(2), Some(Gating::Sigmoid));
        assert_eq!(Gating::from_id(0), None);
        assert_eq!(Gating::from_id(3), None);
        assert_eq!(Gating::Sigmoid.id(), 2);
    }

    fn rejected_key(hp: Hparams) -> String {
        match hp.validate() {
            Err(ModelError::BadValue { key, .. }) => key,
            other => panic!("expected BadValue, got {other:?}"),
        }
    }

    #[test]
    fn validation_names_the_bad_key() {
        hp21b().validate().unwrap();
        assert_eq!(rejected_key(Hparams { n_layer: 0, ..hp21b() }), keys::BLOCK_COUNT);
        assert_eq!(
            rejected_key(Hparams {
                n_head_kv: 3,
                ..hp21b()
            }),
            keys::HEAD_COUNT_KV
        );
        assert_eq!(
            rejected_key(Hparams {
                n_head_kv: 0,
                ..hp21b()
            }),
            keys::HEAD_COUNT_KV
        );
        assert_eq!(
            rejected_key(Hparams {
                n_embd_head_k: 127,
                n_embd_head_v: 127,
                ..hp21b()
            }),
            keys::KEY_LENGTH
        );
        assert_eq!(
            rejected_key(Hparams {
                n_embd_head_v: 64,
                ..hp21b()
            }),
            keys::VALUE_LENGTH
        );
        assert_eq!(
            rejected_key(Hparams {
                rope_freq_base: f32::NAN,
                ..hp21b()
            }),
            keys::ROPE_FREQ_BASE
        );
        assert_eq!(
            rejected_key(Hparams {
                rms_norm_eps: 0.0,
                ..hp21b()
            }),
            keys::RMS_EPS
        );
        assert_eq!(rejected_key(Hparams { n_expert: 0, ..hp21b() }), keys::EXPERT_COUNT);
        assert_eq!(
            rejected_key(Hparams {
                n_expert: 2000,
                ..hp21b()
            }),
            keys::EXPERT_COUNT
        );
        assert_eq!(
            rejected_key(Hparams {
                n_expert_used: 65,
                ..hp21b()
            }),
            keys::EXPERT_USED_COUNT
        );
        assert_eq!(
            rejected_key(Hparams {
                n_expert_used: 0,
                ..hp21b()
            }),
            keys::EXPERT_USED_COUNT
        );
        assert_eq!(
            rejected_key(Hparams { n_ff_exp: 0, ..hp21b() }),
            keys::EXPERT_FEED_FORWARD_LENGTH
        );
        assert_eq!(rejected_key(Hparams { n_vocab: 0, ..hp21b() }), keys::TOKENS);
    }
}
