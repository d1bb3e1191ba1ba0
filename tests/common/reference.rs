//! The naive SmallThinker forward pass: the test oracle for the ggml graph.
//!
//! Plain f32 Rust in the llama2.c style, no ggml, written from the maths in
//! docs/smallthinker-architecture.md (§2 and §7) with llama.cpp's semantics where they differ from HF:
//! router on the raw layer input, gating over all experts then top-k, renormalisation with the 6.1e-5 clamp,
//! expert outputs summed in top-k slot order, RoPE angles iterated as ggml does (`theta *= theta_scale`).
//! Reductions ggml does in double (RMSNorm, softmax sums) are done in f64 here too.
//!
//! Weight layout: a ggml tensor with `ne = [n_in, n_out, ...]` is row-major with rows of `n_in` floats, so
//! `y[o] = dot(w[o * n_in ..][..n_in], x)`.

use smallthinker::model::{tensors, Gating, Hparams, Weight};

/// Where the oracle gets its weights: dims in ggml order and the values as f32 (dequantized if need be).
pub trait Weights {
    /// None if the file has no such tensor (only `output.weight` may be absent).
    fn tensor_f32(&self, name: &str) -> Option<(Vec<u64>, Vec<f32>)>;
}

/// Receives `(name, il, token, values)` for each traced intermediate (see `RefModel::forward_traced`).
pub type Trace<'a> = &'a mut dyn FnMut(&str, i32, usize, &[f32]);

/// Switches for sensitivity checks: the defaults are llama.cpp's behaviour.
#[derive(Clone, Copy, Debug)]
pub struct RefOptions {
    /// Lower bound of the expert-weight sum (llama.cpp: 6.103515625e-5; 0 = HF's plain renormalisation).
    pub weights_sum_min: f32,
    /// Apply the sliding window on SWA layers (false = full causal attention everywhere).
    pub swa: bool,
}

impl Default for RefOptions {
    fn default() -> Self {
        RefOptions {
            weights_sum_min: smallthinker::model::WEIGHTS_SUM_MIN,
            swa: true,
        }
    }
}

struct Layer {
    attn_norm: Vec<f32>, // [n_embd]
    wq: Vec<f32>,        // [n_embd, n_embd_q]
    wk: Vec<f32>,        // [n_embd, n_embd_gqa]
    wv: Vec<f32>,        // [n_embd, n_embd_gqa]
    wo: Vec<f32>,        // [n_embd_q, n_embd]
    ffn_norm: Vec<f32>,  // [n_embd]
    router: Vec<f32>,    // [n_embd, n_expert]
    gate_exps: Vec<f32>, // [n_embd, n_ff_exp, n_expert]
    up_exps: Vec<f32>,   // [n_embd, n_ff_exp, n_expert]
    down_exps: Vec<f32>, // [n_ff_exp, n_embd, n_expert]
}

/// All weights as f32, checked against the declared table.
pub struct RefModel {
    pub hp: Hparams,
    tok_embd: Vec<f32>,       // [n_embd, n_vocab]
    output_norm: Vec<f32>,    // [n_embd]
    output: Option<Vec<f32>>, // [n_embd, n_vocab]; None = tied to tok_embd
    layers: Vec<Layer>,
}

impl RefModel {
    pub fn load(hp: &Hparams, w: &impl Weights) -> RefModel {
        let get = |weight: Weight| -> Option<Vec<f32>> {
            let name = weight.name();
            let (dims, data) = w.tensor_f32(&name)?;
            let want = weight.ne(hp);
            let trim = |d: &[u64]| d.iter().rposition(|&x| x != 1).map_or(0, |i| i + 1);
            assert_eq!(dims[..trim(&dims)], want[..trim(&want)], "{name}: dims");
            assert_eq!(data.len() as u64, want.iter().product::<u64>(), "{name}: element count");
            Some(data)
        };
        let req = |weight: Weight| get(weight).unwrap_or_else(|| panic!("{} is missing", weight.name()));
        // Load everything the table declares, so that a table/oracle disagreement shows up here.
        assert_eq!(tensors::table(hp).len(), 3 + 10 * hp.n_layer as usize);
        let layers = (0..hp.n_layer)
            .map(|il| Layer {
                attn_norm: req(Weight::AttnNorm(il)),
                wq: req(Weight::AttnQ(il)),
                wk: req(Weight::AttnK(il)),
                wv: req(Weight::AttnV(il)),
                wo: req(Weight::AttnOutput(il)),
                ffn_norm: req(Weight::FfnNorm(il)),
                router: req(Weight::FfnGateInp(il)),
                gate_exps: req(Weight::FfnGateExps(il)),
                up_exps: req(Weight::FfnUpExps(il)),
                down_exps: req(Weight::FfnDownExps(il)),
            })
            .collect();
        RefModel {
            hp: hp.clone(),
            tok_embd: req(Weight::TokenEmbd),
            output_norm: req(Weight::OutputNorm),
            output: get(Weight::Output),
            layers,
        }
    }

    /// Logits for every position of `tokens` (positions 0..n), row-major `[n_tokens][n_vocab]`.
    pub fn forward(&self, tokens: &[u32], opts: RefOptions) -> Vec<f32> {
        self.forward_traced(tokens, opts, &mut |_, _, _, _| {})
    }

    /// [`forward`](Self::forward), reporting intermediates to `trace(name, il, token, values)` under
    /// llama.cpp's tensor names (`attn_norm`, `Qcur`, `Kcur`, `Vcur`, `kqv_out`, `ffn_inp`, `ffn_norm`,
    /// `ffn_moe_logits`, `ffn_moe_probs`, `ffn_moe_topk` (expert ids as f32), `ffn_moe_weights_norm`,
    /// `ffn_moe_out`, `l_out`; `result_norm` with il = -1), one token at a time, to bisect a graph mismatch.
    pub fn forward_traced(&self, tokens: &[u32], opts: RefOptions, trace: Trace) -> Vec<f32> {
        let hp = &self.hp;
        let n_embd = hp.n_embd as usize;
        let n_vocab = hp.n_vocab as usize;
        let n_tokens = tokens.len();

        // [n_embd, n_tokens]
        let mut inp_l: Vec<f32> = Vec::with_capacity(n_embd * n_tokens);
        for &t in tokens {
            assert!((t as usize) < n_vocab, "token {t} out of range");
            inp_l.extend_from_slice(&self.tok_embd[t as usize * n_embd..][..n_embd]);
        }
        for (il, layer) in self.layers.iter().enumerate() {
            inp_l = self.layer(il as u32, layer, &inp_l, n_tokens, opts, trace);
        }

        let out_w = self.output.as_ref().unwrap_or(&self.tok_embd);
        let mut logits = vec![0f32; n_vocab * n_tokens];
        for t in 0..n_tokens {
            let cur = rms_norm(&inp_l[t * n_embd..][..n_embd], &self.output_norm, hp.rms_norm_eps);
            trace("result_norm", -1, t, &cur);
            matvec(out_w, &cur, &mut logits[t * n_vocab..][..n_vocab]); // result_output
        }
        logits
    }

    fn layer(&self, il: u32, l: &Layer, inp_l: &[f32], n_tokens: usize, opts: RefOptions, trace: Trace) -> Vec<f32> {
        let ti = il as i32;
        let hp = &self.hp;
        let n_embd = hp.n_embd as usize;
        let hd = hp.n_embd_head() as usize;
        let n_head = hp.n_head as usize;
        let n_gqa = hp.n_gqa() as usize;
        let n_embd_q = hp.n_embd_q() as usize;
        let n_embd_gqa = hp.n_embd_k_gqa() as usize;
        let n_expert = hp.n_expert as usize;
        let window = match (opts.swa, hp.is_swa(il)) {
            (true, true) => hp.n_swa().map(|w| w as usize),
            _ => None,
        };

        // Q, K, V for every position: [n_embd_q, n_tokens], [n_embd_gqa, n_tokens] x2
        let mut q = vec![0f32; n_embd_q * n_tokens];
        let mut k = vec![0f32; n_embd_gqa * n_tokens];
        let mut v = vec![0f32; n_embd_gqa * n_tokens];
        for t in 0..n_tokens {
            let cur = rms_norm(&inp_l[t * n_embd..][..n_embd], &l.attn_norm, hp.rms_norm_eps);
            trace("attn_norm", ti, t, &cur);
            let (qt, kt, vt) = (
                &mut q[t * n_embd_q..][..n_embd_q],
                &mut k[t * n_embd_gqa..][..n_embd_gqa],
                &mut v[t * n_embd_gqa..][..n_embd_gqa],
            );
            matvec(&l.wq, &cur, qt);
            matvec(&l.wk, &cur, kt);
            matvec(&l.wv, &cur, vt);
            if hp.use_rope(il) {
                let base = hp.rope_freq_base(il);
                qt.chunks_exact_mut(hd).for_each(|h| rope_neox(h, t, base));
                kt.chunks_exact_mut(hd).for_each(|h| rope_neox(h, t, base));
            }
            trace("Qcur", ti, t, qt);
            trace("Kcur", ti, t, kt);
            trace("Vcur", ti, t, vt);
        }

        let kq_scale = 1.0 / (hd as f32).sqrt();
        let mut out = Vec::with_capacity(n_embd * n_tokens);
        let mut kqv = vec![0f32; n_embd_q]; // [n_embd_q] for one query
        let mut scores = vec![0f32; n_tokens];
        let mut attn_out = vec![0f32; n_embd];
        for t in 0..n_tokens {
            // keys visible to query t: causal, and on SWA layers t - j < n_swa
            let first = window.map_or(0, |w| (t + 1).saturating_sub(w));
            for h in 0..n_head {
                let qh = &q[t * n_embd_q + h * hd..][..hd];
                let kvh = h / n_gqa;
                let s = &mut scores[first..=t];
                for (j, sj) in (first..=t).zip(s.iter_mut()) {
                    *sj = dot(qh, &k[j * n_embd_gqa + kvh * hd..][..hd]) * kq_scale;
                }
                softmax_in_place(s);
                let o = &mut kqv[h * hd..][..hd];
                o.fill(0.0);
                for (j, &p) in (first..=t).zip(s.iter()) {
                    let vj = &v[j * n_embd_gqa + kvh * hd..][..hd];
                    o.iter_mut().zip(vj).for_each(|(oi, &vi)| *oi += p * vi);
                }
            }
            trace("kqv_out", ti, t, &kqv);
            matvec(&l.wo, &kqv, &mut attn_out);

            let inp_sa = &inp_l[t * n_embd..][..n_embd];
            let ffn_inp: Vec<f32> = attn_out.iter().zip(inp_sa).map(|(a, b)| a + b).collect();
            trace("ffn_inp", ti, t, &ffn_inp);
            let cur = rms_norm(&ffn_inp, &l.ffn_norm, hp.rms_norm_eps);
            trace("ffn_norm", ti, t, &cur);

            // SmallThinker: the router reads the raw layer input, not the normed attention output.
            let mut probs = vec![0f32; n_expert];
            matvec(&l.router, inp_sa, &mut probs);
            trace("ffn_moe_logits", ti, t, &probs);
            match hp.gating() {
                Gating::Softmax => softmax_in_place(&mut probs),
                Gating::Sigmoid => probs.iter_mut().for_each(|p| *p = 1.0 / (1.0 + (-*p).exp())),
            }
            trace("ffn_moe_probs", ti, t, &probs);
            let moe = self.moe(l, &cur, &probs, opts, &mut |name, values| trace(name, ti, t, values));
            trace("ffn_moe_out", ti, t, &moe);
            let l_out: Vec<f32> = moe.iter().zip(&ffn_inp).map(|(a, b)| a + b).collect();
            trace("l_out", ti, t, &l_out);
            out.extend(l_out);
        }
        out
    }

    /// One token's MoE output: top-k on the gated probabilities, renormalised, ReGLU experts, summed in slot order.
    fn moe(
        &self,
        l: &Layer,
        cur: &[f32],
        probs: &[f32],
        opts: RefOptions,
        trace: &mut dyn FnMut(&str, &[f32]),
    ) -> Vec<f32> {
        let hp = &self.hp;
        let n_embd = hp.n_embd as usize;
        let n_ff = hp.n_ff_exp as usize;
        let k = hp.n_expert_used as usize;

        let mut order: Vec<usize> = (0..probs.len()).collect();
        order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a])); // stable: ties keep the lower index first
        let selected = &order[..k]; // ffn_moe_topk
        let sum: f32 = selected.iter().map(|&e| probs[e]).sum();
        let denom = sum.max(opts.weights_sum_min);
        trace("ffn_moe_topk", &selected.iter().map(|&e| e as f32).collect::<Vec<_>>());
        trace(
            "ffn_moe_weights_norm",
            &selected.iter().map(|&e| probs[e] / denom).collect::<Vec<_>>(),
        );

        let mut out = vec![0f32; n_embd];
        let mut gate = vec![0f32; n_ff];
        let mut up = vec![0f32; n_ff];
        let mut down = vec![0f32; n_embd];
        for &e in selected {
            let w = probs[e] / denom; // ffn_moe_weights_norm
            matvec(&l.gate_exps[e * n_ff * n_embd..][..n_ff * n_embd], cur, &mut gate);
            matvec(&l.up_exps[e * n_ff * n_embd..][..n_ff * n_embd], cur, &mut up);
            // ggml_reglu_split(gate, up): relu(gate) * up
            let act: Vec<f32> = gate
                .iter()
                .zip(&up)
                .map(|(&g, &u)| if g > 0.0 { g * u } else { 0.0 })
                .collect();
            matvec(&l.down_exps[e * n_embd * n_ff..][..n_embd * n_ff], &act, &mut down);
            out.iter_mut().zip(&down).for_each(|(o, &d)| *o += w * d);
        }
        out
    }
}

/// ggml_rms_norm (sum of squares in double, scale `1/sqrtf(mean + eps)`) times the weight.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let sum: f64 = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
    let mean = (sum / x.len() as f64) as f32;
    let scale = 1.0 / (mean + eps).sqrt();
    x.iter().zip(w).map(|(&v, &wi)| v * scale * wi).collect()
}

/// NEOX RoPE on one head in place: pairs (i, i + n/2), angle `pos * theta_scale^i` built by repeated
/// multiplication as ggml's rope cache does (freq_scale 1, no YaRN, attn_factor 1).
pub fn rope_neox(x: &mut [f32], pos: usize, freq_base: f32) {
    let n_dims = x.len();
    let half = n_dims / 2;
    let theta_scale = freq_base.powf(-2.0 / n_dims as f32);
    let mut theta = pos as f32;
    for i in 0..half {
        let (sin, cos) = theta.sin_cos();
        let (x0, x1) = (x[i], x[i + half]);
        x[i] = x0 * cos - x1 * sin;
        x[i + half] = x0 * sin + x1 * cos;
        theta *= theta_scale;
    }
}

/// Softmax with the max subtracted and the sum in double (ggml_vec_soft_max_f32).
pub fn softmax_in_place(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f64;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += f64::from(*v);
    }
    let inv = (1.0 / sum) as f32;
    x.iter_mut().for_each(|v| *v *= inv);
}

/// y = W x for W with rows of `x.len()` floats.
pub fn matvec(w: &[f32], x: &[f32], y: &mut [f32]) {
    assert_eq!(w.len(), x.len() * y.len(), "matvec shapes");
    for (yo, row) in y.iter_mut().zip(w.chunks_exact(x.len())) {
        *yo = dot(row, x);
    }
}

/// Dot product with 8 independent accumulators, so that the compiler can vectorise it.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}
