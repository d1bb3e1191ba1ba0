//! How well layer l's router, applied to the input of layer l - d, predicts the experts layer l selects: the
//! recall of the expert cache's lookahead hints (`--lookahead d`), which start those reads d layers early. Over the first N tokens of a
//! text, per selected (token, layer, expert): whether it is in the predicted top-k, and among "cold" selections
//! (experts outside each layer's `hot` most frequent in this run), the same recall.
//!
//!     cargo run --release --example route_lookahead -- MODEL.gguf TEXT N [hot=8] [distance=1]

use smallthinker::gguf::GgufFile;
use smallthinker::model::{KvCache, KvParams, KvType, Model, Rows, Session, SessionParams};
use smallthinker::tokenizer::{Tokenizer, VocabSpec};

fn topk(v: &[f32], k: usize) -> Vec<usize> {
    let mut i: Vec<usize> = (0..v.len()).collect();
    i.sort_by(|&a, &b| v[b].total_cmp(&v[a]));
    i.truncate(k);
    i
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().collect();
    let (path, text, n) = (&a[1], std::fs::read_to_string(&a[2])?, a[3].parse::<usize>()?);
    let hot: usize = a.get(4).map_or(Ok(8), |s| s.parse())?;
    let d: usize = a.get(5).map_or(Ok(1), |s| s.parse())?;
    let file = GgufFile::open(path.as_ref())?;
    let wctx = Model::context(&file)?;
    let model = Model::load(&wctx, &file)?;
    let tok = Tokenizer::new(&VocabSpec::from_gguf(&file)?)?;
    let mut ids = tok.encode(&text, false)?;
    ids.truncate(n);
    let hp = &model.hp;
    let (nl, ne, k) = (hp.n_layer as usize, hp.n_expert as usize, hp.n_expert_used as usize);
    let kctx = KvCache::context(hp)?;
    let kv = KvCache::new(
        &kctx,
        hp,
        KvParams {
            n_ctx: n as u32 + 8,
            n_batch: n as u32,
            ty: KvType::F32,
        },
    )?;
    let params = SessionParams {
        dense: true,
        ..Default::default()
    };
    let mut s = Session::new(&model, kv, params)?;
    let mut names: Vec<String> = (0..nl).map(|l| format!("ffn_moe_logits-{l}")).collect();
    names.push("inp_embd".into());
    names.extend((0..nl).map(|l| format!("l_out-{l}")));
    let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
    let (_, traced) = s.eval_traced(&ids, Rows::Last, &refs)?;
    let get = |name: &str| {
        traced
            .iter()
            .find(|t| t.name == name)
            .map(|t| t.values.clone())
            .unwrap()
    };
    let routers: Vec<Vec<f32>> = model
        .layers
        .iter()
        .map(|l| l.ffn_gate_inp.to_f32_vec().unwrap())
        .collect();
    let ne_embd = hp.n_embd as usize;
    let nt = ids.len();
    // Selection counts per layer (for the hot set).
    let actual: Vec<Vec<Vec<usize>>> = (0..nl)
        .map(|l| {
            let lg = get(&format!("ffn_moe_logits-{l}"));
            (0..nt).map(|t| topk(&lg[t * ne..(t + 1) * ne], k)).collect()
        })
        .collect();
    let (mut hit, mut all, mut chit, mut call, mut hit2) = (0, 0, 0, 0, 0);
    for l in d..nl {
        let mut counts = vec![0usize; ne];
        for sel in &actual[l] {
            for &e in sel {
                counts[e] += 1;
            }
        }
        let hotset = topk(&counts.iter().map(|&c| c as f32).collect::<Vec<_>>(), hot);
        // The input of layer l - d: layer 0's is the embedding, layer i's is l_out-(i - 1).
        let src = l.saturating_sub(d);
        let prev = if src == 0 {
            get("inp_embd")
        } else {
            get(&format!("l_out-{}", src - 1))
        };
        let w = &routers[l];
        for t in 0..nt {
            let x = &prev[t * ne_embd..(t + 1) * ne_embd];
            let pl: Vec<f32> = (0..ne)
                .map(|e| {
                    w[e * ne_embd..(e + 1) * ne_embd]
                        .iter()
                        .zip(x)
                        .map(|(a, b)| a * b)
                        .sum()
                })
                .collect();
            let p = topk(&pl, k);
            let p2 = topk(&pl, 2 * k);
            for &e in &actual[l][t] {
                all += 1;
                hit += p.contains(&e) as usize;
                hit2 += p2.contains(&e) as usize;
                if !hotset.contains(&e) {
                    call += 1;
                    chit += p.contains(&e) as usize;
                }
            }
        }
    }
    println!(
        "distance {d}, {nt} tokens: recall top-{k} {:.3}, top-{} {:.3}; cold selections {:.3} of all, their recall {:.3}",
        hit as f64 / all as f64,
        2 * k,
        hit2 as f64 / all as f64,
        call as f64 / all as f64,
        chit as f64 / call.max(1) as f64
    );
    Ok(())
}
