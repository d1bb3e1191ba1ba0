//! The naive oracle (tests/common/reference.rs) against llama.cpp's logits on the tiny F32 fixtures. This
//! validates the oracle itself, so that the ggml graph can later be tested against it on any input.

mod common;

use common::fixtures::{self, max_diff_and_range, Manifest};
use common::reference::{RefModel, RefOptions};
use smallthinker::gguf::GgufFile;
use smallthinker::model::Hparams;

/// Tolerance relative to the logit range of the compared rows.
const REL_TOL: f32 = 1e-3;
/// Oracle on dequantized weights vs llama.cpp on the quantized files, relative to each row's range: most rows,
/// and any row (a flipped expert choice moves a whole row).
const QUANT_TYPICAL_TOL_Q8_0: f32 = 2e-2;
const QUANT_TYPICAL_TOL_Q4_0: f32 = 4e-2;
const QUANT_MAX_TOL: f32 = 0.3;

fn load(m: &Manifest) -> RefModel {
    load_model(m, "f32")
}

/// The oracle on one of the fixture GGUFs (quantized weights dequantized), with Hparams read from the file.
fn load_model(m: &Manifest, model: &str) -> RefModel {
    let f = GgufFile::open(&m.gguf(model)).expect("open fixture GGUF");
    let hp = Hparams::from_gguf(&f).expect("fixture hparams");
    assert_eq!(hp, m.hparams(), "the GGUF says what the generator wrote");
    RefModel::load(&hp, &f)
}

/// The oracle's logits on the rows a fixture saved.
fn rows(model: &RefModel, tokens: &[u32], rows: &[usize], opts: RefOptions) -> Vec<f32> {
    let n_vocab = model.hp.n_vocab as usize;
    let all = model.forward(tokens, opts);
    rows.iter()
        .flat_map(|&r| all[r * n_vocab..][..n_vocab].iter().copied())
        .collect()
}

fn check_f32_logits(config: &str) {
    let m = fixtures::manifest(config);
    let model = load(&m);
    let mut checked = 0;
    for l in m.logits.iter().filter(|l| l.model == "f32") {
        let want = m.read_logits(l);
        let got = rows(&model, &m.sequences[&l.sequence], &l.rows, RefOptions::default());
        let (diff, range) = max_diff_and_range(&got, &want);
        eprintln!(
            "{config} {}: max |diff| {diff:.3e}, range {range:.2}, rel {:.2e}",
            l.sequence,
            diff / range
        );
        assert!(
            diff <= REL_TOL * range,
            "{config} {}: max |diff| {diff} > {REL_TOL} * {range}",
            l.sequence
        );
        checked += 1;
    }
    assert!(checked >= 2, "{config}: expected at least two F32 logits fixtures");
}

#[test]
fn oracle_matches_llama_cpp_st4b() {
    check_f32_logits("st4b");
}

#[test]
fn oracle_matches_llama_cpp_st21b() {
    check_f32_logits("st21b");
}

#[test]
fn oracle_matches_llama_cpp_stmha() {
    check_f32_logits("stmha");
}

/// The long st21b prompt only matches with the 4096 sliding window applied: the fixture can tell SWA from
/// full attention. Rows before position 4096 see every key either way; row 4096 loses key 0 only (a small
/// change, still 100x above the oracle's agreement with llama.cpp), the last rows lose about 100 keys.
#[test]
fn long_prompt_needs_the_sliding_window() {
    let m = fixtures::manifest("st21b");
    let model = load(&m);
    let l = m
        .logits
        .iter()
        .find(|l| l.model == "f32" && l.sequence == "long")
        .expect("long fixture");
    let want = m.read_logits(l);
    let full = rows(
        &model,
        &m.sequences["long"],
        &l.rows,
        RefOptions {
            swa: false,
            ..RefOptions::default()
        },
    );
    let n_vocab = m.n_vocab as usize;
    let n = m.sequences["long"].len();
    for (i, &pos) in l.rows.iter().enumerate() {
        let (diff, range) = max_diff_and_range(&full[i * n_vocab..][..n_vocab], &want[i * n_vocab..][..n_vocab]);
        let rel = diff / range;
        eprintln!("row {pos}: full attention differs by {rel:.2e} of the range");
        if pos < 4096 {
            assert!(
                rel <= REL_TOL,
                "row {pos}: no key is outside the window yet, rel diff {rel}"
            );
        } else if pos + 10 > n {
            assert!(
                rel > 10.0 * REL_TOL,
                "row {pos}: full attention should differ clearly, rel diff {rel}"
            );
        } else {
            assert!(rel > 1e-4, "row {pos}: full attention should differ, rel diff {rel}");
        }
    }
}

/// stmha's clamp tokens get all-negative layer-0 router logits; llama.cpp then divides the expert weights by
/// 6.1e-5 rather than their sum, and the fixture shows it.
#[test]
fn weight_sum_clamp_matters_on_the_clamp_tokens() {
    let m = fixtures::manifest("stmha");
    let model = load(&m);
    let l = m.logits.iter().find(|l| l.model == "f32" && l.sequence == "a").unwrap();
    let tokens = &m.sequences["a"];
    let want = m.read_logits(l);
    let plain = rows(
        &model,
        tokens,
        &l.rows,
        RefOptions {
            weights_sum_min: 0.0,
            ..RefOptions::default()
        },
    );
    let n_vocab = m.n_vocab as usize;
    let mut clamped_rows = 0;
    for (i, &pos) in l.rows.iter().enumerate() {
        let (diff, range) = max_diff_and_range(&plain[i * n_vocab..][..n_vocab], &want[i * n_vocab..][..n_vocab]);
        if m.config.clamp_tokens.contains(&tokens[pos]) {
            assert!(
                diff > 10.0 * REL_TOL * range,
                "position {pos}: plain renormalisation should differ"
            );
            clamped_rows += 1;
        }
    }
    assert_eq!(clamped_rows, 2);
}

/// Greedy decoding with the oracle (full recompute per step) gives llama.cpp's continuation (its KV-cache
/// decode), on every step whose top-2 margin is clear of the tolerance.
#[test]
fn greedy_continuation_matches_llama_cpp() {
    for config in fixtures::CONFIGS {
        let m = fixtures::manifest(config);
        let model = load(&m);
        let g = m.greedy.iter().find(|g| g.model == "f32").unwrap();
        let n_vocab = m.n_vocab as usize;
        let mut tokens = g.prompt.clone();
        for (step, (&want, &margin)) in g.tokens.iter().zip(&g.margins).enumerate() {
            assert!(
                margin > 1e-3,
                "{config} step {step}: margin {margin} too small for a stable comparison"
            );
            let logits = model.forward(&tokens, RefOptions::default());
            let last = &logits[(tokens.len() - 1) * n_vocab..];
            let next = (0..n_vocab)
                .max_by(|&a, &b| last[a].total_cmp(&last[b]).then(b.cmp(&a)))
                .unwrap() as u32;
            assert_eq!(next, want, "{config} step {step}");
            tokens.push(next);
        }
        assert_eq!(tokens.len(), g.prompt.len() + 64);
    }
}

/// With quantized weights llama.cpp also quantizes the activations (to Q8_0) for every matmul, so the oracle
/// on the dequantized weights only matches approximately: about 1e-2 of the range on most rows, more on the rows
/// where the perturbation flips an expert choice. This bounds that gap, i.e. what a ggml graph should expect
/// against the oracle on these files (against llama.cpp itself it should do far better).
#[test]
fn oracle_on_dequantized_weights_is_close_to_llama_cpp_quantized() {
    for config in fixtures::CONFIGS {
        let m = fixtures::manifest(config);
        for (model, typical) in [("q8_0", QUANT_TYPICAL_TOL_Q8_0), ("q4_0", QUANT_TYPICAL_TOL_Q4_0)] {
            let oracle = load_model(&m, model);
            let l = m.logits.iter().find(|l| l.model == model && l.sequence == "b").unwrap();
            let want = m.read_logits(l);
            let got = rows(&oracle, &m.sequences["b"], &l.rows, RefOptions::default());
            let n_vocab = m.n_vocab as usize;
            let mut rel: Vec<f32> = (0..l.rows.len())
                .map(|r| {
                    let (diff, range) =
                        max_diff_and_range(&got[r * n_vocab..][..n_vocab], &want[r * n_vocab..][..n_vocab]);
                    diff / range
                })
                .collect();
            rel.sort_by(f32::total_cmp);
            let (median, p90, max) = (rel[rel.len() / 2], rel[rel.len() * 9 / 10], rel[rel.len() - 1]);
            eprintln!("{config} {model}: rel diff per row: median {median:.2e}, p90 {p90:.2e}, max {max:.2e}");
            assert!(median <= typical && p90 <= 2.0 * typical, "{config} {model}: {rel:?}");
            assert!(max <= QUANT_MAX_TOL, "{config} {model}: {rel:?}");
        }
    }
}

/// The trace reports llama.cpp-named intermediates consistently: every layer and token, l_out = ffn_inp +
/// ffn_moe_out, result_norm gives the logits, and layer 0's expert weights show the clamp on the clamp tokens.
#[test]
fn trace_reports_consistent_intermediates() {
    use std::collections::HashMap;
    let m = fixtures::manifest("stmha");
    let model = load(&m);
    let tokens = &m.sequences["a"];
    let mut seen: HashMap<(String, i32, usize), Vec<f32>> = HashMap::new();
    let logits = model.forward_traced(tokens, RefOptions::default(), &mut |name, il, t, v| {
        assert!(
            seen.insert((name.to_string(), il, t), v.to_vec()).is_none(),
            "{name}-{il} token {t} twice"
        );
    });
    let get = |name: &str, il: i32, t: usize| &seen[&(name.to_string(), il, t)];
    let n_layer = model.hp.n_layer as i32;
    assert_eq!(
        seen.keys().filter(|k| k.0 == "l_out").count(),
        n_layer as usize * tokens.len()
    );
    let n_vocab = m.n_vocab as usize;
    let f = GgufFile::open(&m.gguf("f32")).unwrap();
    let (_, out_w) = common::reference::Weights::tensor_f32(&f, "output.weight").unwrap();
    for (t, &tok) in tokens.iter().enumerate() {
        for il in 0..n_layer {
            let sum: Vec<f32> = get("ffn_inp", il, t)
                .iter()
                .zip(get("ffn_moe_out", il, t))
                .map(|(a, b)| a + b)
                .collect();
            assert_eq!(&sum, get("l_out", il, t));
        }
        let mut row = vec![0f32; n_vocab];
        common::reference::matvec(&out_w, get("result_norm", -1, t), &mut row);
        assert_eq!(row, logits[t * n_vocab..][..n_vocab]);
        let w_sum: f32 = get("ffn_moe_weights_norm", 0, t).iter().sum();
        if m.config.clamp_tokens.contains(&tok) {
            assert!(w_sum < 1e-3, "token {t}: clamped weights sum {w_sum}");
        } else {
            assert!((w_sum - 1.0).abs() < 1e-5, "token {t}: weights sum {w_sum}");
        }
    }
}
