//! Weight types beyond the llama.cpp fixtures: an in-test random SmallThinker (256 wide, so the K-quants'
//! 256-element blocks fit) written as F32 and as F16, BF16, Q8_0, Q6_K, Q4_K, Q4_0 (every matrix and the
//! embedding in that type, norms and routers in F32 as llama-quantize keeps them); each loads and runs, with
//! logits close to the F32 model's, the error growing as the bits shrink, and closer to the naive oracle
//! run on the same weights dequantized (so what remains is ggml's rounding of the activations).

mod common;
mod model_graph_util;

use common::reference::{RefModel, RefOptions};

use std::io::Write;
use std::path::Path;

use model_graph_util::{all_rows, argmax, nmse};
use smallthinker::gguf::{GgmlType, GgufFile, GgufWriter, Value};
use smallthinker::model::{keys, tensors, Gating, Hparams};
use smallthinker::quant;

fn hparams() -> Hparams {
    Hparams {
        n_layer: 5,
        n_ctx_train: 8192,
        n_embd: 256,
        n_ff: Some(256),
        n_head: 2,
        n_head_kv: 1,
        n_embd_head_k: 128,
        n_embd_head_v: 128,
        rope_freq_base: 1e4,
        rope_freq_base_swa: 1e4,
        rms_norm_eps: 1e-6,
        n_expert: 4,
        n_expert_used: 2,
        n_ff_exp: 256,
        gating: Gating::Softmax,
        swa: Some(4096),
        n_vocab: 96,
    }
}

/// Seeded uniform values in [-scale, scale].
fn random(n: usize, scale: f32, seed: &mut u64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            ((*seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// Writes the model with every matrix (and the embedding) in `ty`.
fn write_model(path: &Path, ty: GgmlType) {
    let hp = hparams();
    let mut w = GgufWriter::new();
    w.add_kv(keys::ARCHITECTURE, "smallthinker");
    for (k, v) in [
        (keys::BLOCK_COUNT, hp.n_layer),
        (keys::CONTEXT_LENGTH, hp.n_ctx_train),
        (keys::EMBEDDING_LENGTH, hp.n_embd),
        (keys::FEED_FORWARD_LENGTH, hp.n_ff_exp),
        (keys::HEAD_COUNT, hp.n_head),
        (keys::HEAD_COUNT_KV, hp.n_head_kv),
        (keys::KEY_LENGTH, hp.n_embd_head_k),
        (keys::VALUE_LENGTH, hp.n_embd_head_v),
        (keys::EXPERT_COUNT, hp.n_expert),
        (keys::EXPERT_USED_COUNT, hp.n_expert_used),
        (keys::EXPERT_FEED_FORWARD_LENGTH, hp.n_ff_exp),
        (keys::EXPERT_GATING_FUNC, hp.gating.id()),
        (keys::SLIDING_WINDOW, 4096),
    ] {
        w.add_kv(k, Value::U32(v));
    }
    w.add_kv(keys::RMS_EPS, Value::F32(hp.rms_norm_eps));
    w.add_kv(keys::ROPE_FREQ_BASE, Value::F32(hp.rope_freq_base));
    w.add_kv(
        keys::TOKENS,
        Value::string_array((0..hp.n_vocab).map(|i| format!("t{i}")).collect()),
    );

    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut data = Vec::new();
    for spec in tensors::table(&hp) {
        let n: u64 = spec.ne.iter().product();
        let f32_kept = spec.name.contains("norm") || spec.name.contains("ffn_gate_inp");
        let values = if spec.name.contains("norm") {
            random(n as usize, 0.2, &mut seed).iter().map(|v| 1.0 + v).collect()
        } else {
            random(n as usize, 2.0 / (spec.ne[0] as f32).sqrt(), &mut seed)
        };
        let t = if f32_kept { GgmlType::F32 } else { ty };
        w.add_tensor(spec.name.clone(), &spec.ne, t).unwrap();
        data.push(quant::quantize(t, &values, spec.ne[0] as usize).unwrap());
    }
    w.write(path, |i, _, out: &mut dyn Write| out.write_all(&data[i]))
        .unwrap();
}

#[test]
fn every_weight_type_loads_and_tracks_f32() {
    let dir = tempfile::tempdir().unwrap();
    let tokens: Vec<u32> = (0..20).map(|i| (i * 37 + 5) % 96).collect();
    let logits = |ty: GgmlType| {
        let p = dir.path().join(format!("{}.gguf", ty.name()));
        write_model(&p, ty);
        all_rows(&p, &tokens, 8)
    };
    let reference = logits(GgmlType::F32);
    let mut last = 0.0;
    for (ty, bound) in [
        (GgmlType::F16, 1e-3),
        (GgmlType::BF16, 1e-2),
        (GgmlType::Q8_0, 1e-2),
        (GgmlType::Q6_K, 5e-2),
        (GgmlType::Q4_K, 0.5),
        (GgmlType::Q4_0, 0.5),
    ] {
        let got = logits(ty);
        let e = nmse(&got, &reference);
        let agree = got
            .chunks_exact(96)
            .zip(reference.chunks_exact(96))
            .filter(|(a, b)| argmax(a) == argmax(b))
            .count();
        eprintln!("{ty}: nmse {e:.2e} vs F32, argmax agrees on {agree}/20 rows");
        assert!(e > 0.0 && e <= bound, "{ty}: nmse {e}");
        assert!(e >= last, "{ty}: fewer bits should not be more accurate ({e} < {last})");
        last = e;
        // The same weights dequantized, through the naive oracle: only ggml's activation rounding differs.
        let file = GgufFile::open(&dir.path().join(format!("{}.gguf", ty.name()))).unwrap();
        let oracle = RefModel::load(&hparams(), &file).forward(&tokens, RefOptions::default());
        let e_oracle = nmse(&got, &oracle);
        eprintln!("{ty}: nmse {e_oracle:.2e} vs the oracle on the dequantized weights");
        assert!(
            e_oracle < e,
            "{ty}: the graph strays from its own weights ({e_oracle} vs {e})"
        );
    }
}
