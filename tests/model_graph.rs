//! The ggml graph against llama.cpp's logits on the tiny fixtures (tests/fixtures/model, branch `model`), and
//! incremental decoding against whole-prompt evaluation.

mod common;
mod model_graph_util;

use common::fixtures::{self, Manifest};
use model_graph_util::{all_rows, argmax, nmse, rel_diff, run};
use smallthinker::model::{KvLayout, KvParams, KvType, Rows};

/// F32 weights and KV: max |diff| within this fraction of the logit range.
const F32_REL_TOL: f32 = 1e-3;

/// The fixture's saved rows out of all-row logits.
fn pick(all: &[f32], rows: &[usize], n_vocab: usize) -> Vec<f32> {
    rows.iter()
        .flat_map(|&r| all[r * n_vocab..][..n_vocab].iter().copied())
        .collect()
}

fn short_sequences(m: &Manifest, model: &str) -> Vec<(Vec<f32>, Vec<f32>)> {
    let n_vocab = m.n_vocab as usize;
    m.logits
        .iter()
        .filter(|l| l.model == model && l.sequence != "long")
        .map(|l| {
            let got = all_rows(&m.gguf(model), &m.sequences[&l.sequence], 512);
            (pick(&got, &l.rows, n_vocab), m.read_logits(l))
        })
        .collect()
}

#[test]
fn f32_logits_match_llama_cpp() {
    for config in fixtures::CONFIGS {
        let m = fixtures::manifest(config);
        let pairs = short_sequences(&m, "f32");
        assert!(pairs.len() >= 2, "{config}: expected two F32 fixtures");
        for (got, want) in pairs {
            let rel = rel_diff(&got, &want);
            eprintln!("{config} f32: max |diff| / range = {rel:.2e}");
            assert!(rel <= F32_REL_TOL, "{config}: rel diff {rel}");
        }
    }
}

#[test]
fn quantized_logits_match_llama_cpp() {
    for model in ["q8_0", "q4_0"] {
        let (mut agree, mut rows) = (0, 0);
        for config in fixtures::CONFIGS {
            let m = fixtures::manifest(config);
            let n_vocab = m.n_vocab as usize;
            for (got, want) in short_sequences(&m, model) {
                let e = nmse(&got, &want);
                eprintln!(
                    "{config} {model}: nmse {e:.2e}, rel max diff {:.2e}",
                    rel_diff(&got, &want)
                );
                assert!(e <= 1e-3, "{config} {model}: nmse {e}");
                for (g, w) in got.chunks_exact(n_vocab).zip(want.chunks_exact(n_vocab)) {
                    agree += usize::from(argmax(g) == argmax(w));
                    rows += 1;
                }
            }
        }
        assert!(rows >= 72, "{model}: only {rows} rows compared");
        assert!(
            agree * 100 >= rows * 99,
            "{model}: argmax agrees on {agree} of {rows} rows"
        );
    }
}

/// The 4200-token st21b prompt: SWA layers hold n_swa + n_batch = 4160 cells, so the ring wraps and the mask
/// must follow the cells' positions. The prompt goes in as 4094 tokens, then the rest with every row returned.
#[test]
fn long_prompt_with_swa_ring_wrap_around_matches_llama_cpp() {
    let m = fixtures::manifest("st21b");
    let n_vocab = m.n_vocab as usize;
    let seq = &m.sequences["long"];
    let n_batch = 64;
    let layout = KvLayout::new(
        &m.hparams(),
        &KvParams {
            n_ctx: seq.len() as u32,
            n_batch,
            ty: KvType::F32,
        },
    );
    assert_eq!(
        layout.size_swa,
        4096 + 64,
        "the ring must be shorter than the prompt, so that it wraps"
    );
    assert!(seq.len() > 4160);
    for model in ["f32", "q8_0", "q4_0"] {
        let l = m
            .logits
            .iter()
            .find(|l| l.model == model && l.sequence == "long")
            .unwrap();
        let split = l.rows[0];
        let ty = KvType::F32;
        let got = run(
            &m.gguf(model),
            seq.len() as u32,
            n_batch,
            ty,
            &[(&seq[..split], Rows::Last), (&seq[split..], Rows::All)],
        );
        let tail = &got[n_vocab..]; // drop the first call's last row
        let rows: Vec<usize> = l.rows.iter().map(|r| r - split).collect();
        let got = pick(tail, &rows, n_vocab);
        let want = m.read_logits(l);
        let (rel, e) = (rel_diff(&got, &want), nmse(&got, &want));
        eprintln!("st21b {model} long: rel max diff {rel:.2e}, nmse {e:.2e}");
        if model == "f32" {
            assert!(rel <= F32_REL_TOL, "f32 long: rel diff {rel}");
        } else {
            assert!(e <= 1e-3, "{model} long: nmse {e}");
        }
    }
}

/// Prompt then one token at a time, and several batch sizes, give the logits of one whole-prompt evaluation.
#[test]
fn incremental_decode_equals_whole_prompt() {
    for config in ["st21b", "st4b"] {
        let m = fixtures::manifest(config);
        let n_vocab = m.n_vocab as usize;
        let seq = &m.sequences["b"];
        let path = m.gguf("f32");
        let whole = all_rows(&path, seq, 512);
        for n_batch in [1, 5, 7, 16] {
            let rel = rel_diff(&all_rows(&path, seq, n_batch), &whole);
            assert!(rel <= 1e-5, "{config} n_batch {n_batch}: rel diff {rel}");
        }
        // 10 prompt tokens (last row only), then one call per token.
        let mut steps: Vec<(&[u32], Rows)> = vec![(&seq[..10], Rows::Last)];
        steps.extend((10..seq.len()).map(|i| (&seq[i..i + 1], Rows::Last)));
        let decoded = run(&path, seq.len() as u32, 4, KvType::F32, &steps);
        let rel = rel_diff(&decoded, &whole[9 * n_vocab..]);
        eprintln!("{config}: incremental decode rel diff {rel:.2e}");
        assert!(rel <= 1e-5, "{config} decode: rel diff {rel}");
    }
}

/// The default f16 cache rounds K and V: close to the f32 cache, but not equal.
#[test]
fn f16_kv_cache_is_close_to_f32() {
    let m = fixtures::manifest("st21b");
    let seq = &m.sequences["b"];
    let path = m.gguf("f32");
    let f32_kv = all_rows(&path, seq, 8);
    let f16_kv = run(&path, 64, 8, KvType::F16, &[(seq, Rows::All)]);
    let rel = rel_diff(&f16_kv, &f32_kv);
    eprintln!("f16 KV vs f32 KV: rel diff {rel:.2e}");
    assert!(rel > 0.0 && rel <= 1e-2, "rel diff {rel}");
}

/// Against the naive oracle (tests/common/reference.rs) on token sequences llama.cpp never saw, including
/// stmha's weight-sum clamp tokens.
#[test]
fn graph_matches_the_naive_oracle_on_new_tokens() {
    use common::reference::{RefModel, RefOptions};
    for config in fixtures::CONFIGS {
        let m = fixtures::manifest(config);
        let mut x = 0x2545_f491_u32;
        let mut tokens: Vec<u32> = (0..37)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x % m.n_vocab
            })
            .collect();
        tokens.extend(&m.config.clamp_tokens);
        let path = m.gguf("f32");
        let oracle = RefModel::load(&m.hparams(), &smallthinker::gguf::GgufFile::open(&path).unwrap());
        let want = oracle.forward(&tokens, RefOptions::default());
        let got = all_rows(&path, &tokens, 16);
        let rel = rel_diff(&got, &want);
        eprintln!("{config}: graph vs oracle rel diff {rel:.2e}");
        assert!(rel <= F32_REL_TOL, "{config}: rel diff {rel}");
    }
}

/// Every intermediate carries llama.cpp's name, in every batch, with the values its name promises.
#[test]
fn intermediates_carry_llama_cpp_names() {
    use smallthinker::gguf::GgufFile;
    use smallthinker::model::{KvCache, Model, Session, SessionParams};
    let m = fixtures::manifest("st21b");
    let file = GgufFile::open(&m.gguf("f32")).unwrap();
    let wctx = Model::context(&file).unwrap();
    let model = Model::load(&wctx, &file).unwrap();
    let hp = model.hp.clone();
    let kctx = KvCache::context(&hp).unwrap();
    let params = KvParams {
        n_ctx: 64,
        n_batch: 5,
        ty: KvType::F32,
    };
    let mut s = Session::new(
        &model,
        KvCache::new(&kctx, &hp, params).unwrap(),
        SessionParams {
            n_threads: 2,
            ..Default::default()
        },
    )
    .unwrap();
    // "kq" is an intermediate of llama.cpp's soft_max path (the default cell-attention op has none).
    s.set_attn_kernel(smallthinker::graph::AttnKernel::SoftMax);
    let per_layer = [
        "attn_norm",
        "Qcur",
        "Kcur",
        "Vcur",
        "kq",
        "ffn_inp",
        "ffn_norm",
        "ffn_moe_logits",
        "ffn_moe_probs",
        "ffn_moe_weights_norm",
        "ffn_moe_out",
        "l_out",
    ];
    let mut names: Vec<String> = (0..hp.n_layer)
        .flat_map(|il| per_layer.iter().map(move |n| format!("{n}-{il}")))
        .collect();
    names.extend(["result_norm".to_string(), "result_output".to_string()]);
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let tokens = &m.sequences["a"]; // 12 tokens: batches of 5, 5, 2
    let (logits, traced) = s.eval_traced(tokens, Rows::All, &refs).unwrap();
    assert_eq!(traced.len(), 3 * names.len(), "every name in every batch");
    let get = |name: &str, batch: usize| traced.iter().find(|t| t.name == name && t.batch == batch).unwrap();
    let n_tok = [5, 5, 2];
    for (batch, &n) in n_tok.iter().enumerate() {
        let w = get("ffn_moe_weights_norm-2", batch);
        assert_eq!(w.ne[..2], [2, n]);
        for col in w.values.chunks_exact(2) {
            assert!(
                (col.iter().sum::<f32>() - 1.0).abs() < 1e-5,
                "weights renormalised: {col:?}"
            );
        }
        assert_eq!(get("Qcur-1", batch).ne[..3], [128, 2, n]);
        // kq of the last batch spans every cell written so far.
        assert_eq!(get("kq-0", batch).ne[..3], [5 * batch as i64 + n, n, 2]);
    }
    // result_output of the last batch is the last rows of the returned logits.
    let last = &get("result_output", 2).values;
    assert_eq!(&logits[logits.len() - last.len()..], &last[..]);
}
