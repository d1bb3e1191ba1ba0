//! The sampler chain and stop handling.
mod tokenizer_support;

use smallthinker::sampling::{
    Generation, Sampler, SamplerParams, SamplingError, StopCriteria, StopMatcher, StopReason, StopStatus,
};

/// Only the stage under test is on.
fn plain(seed: u64) -> SamplerParams {
    SamplerParams {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        repeat_penalty: 1.0,
        seed: Some(seed),
        ..SamplerParams::default()
    }
}

/// Logits whose softmax is exactly `probs` (up to rounding).
fn logits_of(probs: &[f32]) -> Vec<f32> {
    probs.iter().map(|p| p.ln()).collect()
}

/// Deterministic pseudo-random logits for the tests, from a simple LCG.
fn random_logits(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32) * 10.0 - 5.0
        })
        .collect()
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

#[test]
fn defaults_are_llama_cpp_defaults() {
    let p = SamplerParams::default();
    assert_eq!((p.temperature, p.top_k, p.top_p, p.min_p), (0.8, 40, 0.95, 0.05));
    assert_eq!((p.repeat_penalty, p.repeat_last_n), (1.0, 64));
}

#[test]
fn greedy_picks_the_argmax() {
    let mut s = Sampler::new(SamplerParams::greedy()).unwrap();
    for seed in 0..20 {
        let logits = random_logits(1000, seed);
        assert_eq!(s.sample(&logits).unwrap(), argmax(&logits));
    }
    // Ties go to the lowest id.
    assert_eq!(s.sample(&[1.0, 3.0, 3.0, f32::NEG_INFINITY]).unwrap(), 1);
}

#[test]
fn top_k_one_equals_greedy() {
    for seed in 0..20 {
        let logits = random_logits(5000, seed + 100);
        let mut s = Sampler::new(SamplerParams {
            top_k: 1,
            temperature: 1.5,
            ..plain(seed)
        })
        .unwrap();
        assert_eq!(s.sample(&logits).unwrap(), argmax(&logits));
    }
}

#[test]
fn seeded_runs_reproduce() {
    let logits = random_logits(200, 7).iter().map(|l| l * 0.3).collect::<Vec<_>>();
    let run = |seed| {
        let mut s = Sampler::new(SamplerParams {
            seed: Some(seed),
            ..SamplerParams::default()
        })
        .unwrap();
        (0..50).map(|_| s.sample(&logits).unwrap()).collect::<Vec<_>>()
    };
    assert_eq!(run(42), run(42));
    assert_ne!(run(42), run(43));
    // The draws really vary, so the equality above means something.
    let a = run(42);
    assert!(a.iter().any(|&t| t != a[0]));
}

#[test]
fn draws_follow_the_distribution() {
    let probs = [0.5, 0.25, 0.15, 0.1];
    let logits = logits_of(&probs);
    let mut s = Sampler::new(plain(1)).unwrap();
    let n = 20_000;
    let mut counts = [0usize; 4];
    for _ in 0..n {
        counts[s.sample(&logits).unwrap() as usize] += 1;
    }
    for (c, p) in counts.iter().zip(probs) {
        let f = *c as f32 / n as f32;
        assert!((f - p).abs() < 0.015, "frequency {f} for p {p}: {counts:?}");
    }
}

#[test]
fn temperature_sharpens_and_flattens() {
    let logits = logits_of(&[0.5, 0.25, 0.15, 0.1]);
    let share_of_top = |temperature| {
        let mut s = Sampler::new(SamplerParams {
            temperature,
            ..plain(3)
        })
        .unwrap();
        (0..4000).filter(|_| s.sample(&logits).unwrap() == 0).count() as f32 / 4000.0
    };
    assert!(share_of_top(0.3) > 0.85);
    assert!(share_of_top(3.0) < 0.4);
}

fn kept(params: SamplerParams, logits: &[f32]) -> Vec<u32> {
    let mut s = Sampler::new(params).unwrap();
    s.candidates(logits).unwrap().iter().map(|c| c.id).collect()
}

#[test]
fn top_p_keeps_the_smallest_set_reaching_p() {
    // Shuffled ids so sorting matters: probabilities 0.1, 0.5, 0.15, 0.25.
    let logits = logits_of(&[0.1, 0.5, 0.15, 0.25]);
    assert_eq!(kept(SamplerParams { top_p: 0.4, ..plain(0) }, &logits), [1]);
    assert_eq!(kept(SamplerParams { top_p: 0.7, ..plain(0) }, &logits), [1, 3]);
    assert_eq!(kept(SamplerParams { top_p: 0.8, ..plain(0) }, &logits), [1, 3, 2]);
    assert_eq!(
        kept(
            SamplerParams {
                top_p: 0.95,
                ..plain(0)
            },
            &logits
        ),
        [1, 3, 2, 0]
    );
    assert_eq!(
        kept(
            SamplerParams {
                top_p: 0.4,
                min_keep: 3,
                ..plain(0)
            },
            &logits
        ),
        [1, 3, 2]
    );
    // Renormalised within the kept set.
    let mut s = Sampler::new(SamplerParams { top_p: 0.7, ..plain(0) }).unwrap();
    let c = s.candidates(&logits).unwrap();
    assert!((c[0].p - 0.5 / 0.75).abs() < 1e-6 && (c[1].p - 0.25 / 0.75).abs() < 1e-6);
}

#[test]
fn min_p_drops_tokens_below_a_fraction_of_the_best() {
    let logits = logits_of(&[0.1, 0.5, 0.15, 0.25]);
    // p >= 0.2 * 0.5 = 0.1 keeps all; >= 0.125 drops the 0.1; >= 0.25 keeps 0.5 and 0.25; >= 0.4 only the best.
    assert_eq!(
        kept(
            SamplerParams {
                min_p: 0.19,
                ..plain(0)
            },
            &logits
        ),
        [1, 3, 2, 0]
    );
    assert_eq!(
        kept(
            SamplerParams {
                min_p: 0.25,
                ..plain(0)
            },
            &logits
        ),
        [1, 3, 2]
    );
    assert_eq!(
        kept(
            SamplerParams {
                min_p: 0.45,
                ..plain(0)
            },
            &logits
        ),
        [1, 3]
    );
    assert_eq!(kept(SamplerParams { min_p: 0.8, ..plain(0) }, &logits), [1]);
    // The chain order: top-k 3 first, then top-p over the renormalised three.
    let chained = SamplerParams {
        top_k: 3,
        top_p: 0.6,
        ..plain(0)
    };
    assert_eq!(kept(chained, &logits), [1, 3]); // 0.5/0.9 = 0.56 < 0.6, then 0.83
}

#[test]
fn repetition_penalty_within_its_window() {
    let logits = [2.0, 1.9, -1.0, 0.5];
    let params = SamplerParams {
        repeat_penalty: 1.5,
        repeat_last_n: 2,
        ..SamplerParams::greedy()
    };
    let mut s = Sampler::new(params).unwrap();
    assert_eq!(s.sample(&logits).unwrap(), 0);
    s.accept(0);
    // 2.0 / 1.5 = 1.33 < 1.9: the penalty moves greedy to token 1.
    assert_eq!(s.sample(&logits).unwrap(), 1);
    s.accept(2);
    let mut p = Sampler::new(SamplerParams {
        repeat_penalty: 1.5,
        repeat_last_n: 2,
        ..plain(0)
    })
    .unwrap();
    p.accept(0);
    p.accept(2);
    let c = p.candidates(&logits).unwrap();
    let logit = |id| c.iter().find(|c| c.id == id).unwrap().logit;
    assert!((logit(0) - 2.0 / 1.5).abs() < 1e-6);
    assert!((logit(2) - -1.5).abs() < 1e-6, "negative logits are multiplied");
    assert_eq!(logit(1), 1.9);
    // Two more tokens push 0 out of the 2-token window: greedy goes back to 0.
    s.accept(3);
    s.accept(3);
    assert_eq!(s.sample(&logits).unwrap(), 0);
    s.reset();
    assert_eq!(s.sample(&logits).unwrap(), 0);
}

#[test]
fn bad_inputs_are_errors() {
    let mut s = Sampler::new(SamplerParams::default()).unwrap();
    assert_eq!(s.sample(&[]), Err(SamplingError::Empty));
    assert_eq!(s.sample(&[0.0, f32::NAN]), Err(SamplingError::NaN { index: 1 }));
    let err = Sampler::new(SamplerParams {
        top_p: 0.0,
        ..SamplerParams::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("top_p"), "{err}");
    let mut s = Sampler::new(SamplerParams {
        repeat_penalty: 1.1,
        ..SamplerParams::default()
    })
    .unwrap();
    s.accept(10);
    assert_eq!(
        s.sample(&[0.0; 4]),
        Err(SamplingError::TokenOutOfRange { id: 10, n_vocab: 4 })
    );
}

#[test]
fn stop_strings_spanning_pieces() {
    let mut m = StopMatcher::new(["</s>", "STOP"]);
    assert_eq!(m.push("Hello <"), StopStatus::Continue("Hello ".into()));
    assert_eq!(m.held(), "<");
    assert_eq!(m.push("/"), StopStatus::Continue(String::new()));
    assert_eq!(
        m.push("s> world"),
        StopStatus::Stopped {
            text: String::new(),
            stop: "</s>".into()
        }
    );

    // A false start is released once it cannot match any more.
    let mut m = StopMatcher::new(["</s>"]);
    assert_eq!(m.push("a </"), StopStatus::Continue("a ".into()));
    assert_eq!(m.push("b> c"), StopStatus::Continue("</b> c".into()));
    assert_eq!(m.push("<"), StopStatus::Continue(String::new()));
    assert_eq!(m.finish(), "<");

    // The earliest stop string wins, text before it is kept.
    let mut m = StopMatcher::new(["world", "lo w"]);
    assert_eq!(
        m.push("hello world"),
        StopStatus::Stopped {
            text: "hel".into(),
            stop: "lo w".into()
        }
    );
}

#[test]
fn generation_stops_on_stop_strings_across_tokens_eog_and_max_tokens() {
    let tok = tokenizer_support::tokenizer();
    let ids = tok.encode("Hello world, STOP now", false).unwrap();
    // " STOP" is split over several tokens, so the match spans token boundaries.
    assert!(ids.len() >= 5);
    let mut g = Generation::new(StopCriteria {
        stop_strings: vec!["STOP".into()],
        ..StopCriteria::default()
    });
    let mut text = String::new();
    let mut reason = None;
    for &id in &ids {
        let step = g.push(tok, id).unwrap();
        text.push_str(&step.text);
        if step.stop.is_some() {
            reason = step.stop;
            break;
        }
    }
    assert_eq!(text, "Hello world, ");
    assert_eq!(reason, Some(StopReason::StopString("STOP".into())));

    // End of generation: <|im_end|> ends the text and is not shown.
    let im_end = tok.token_id("<|im_end|>").unwrap();
    let mut g = Generation::new(StopCriteria::default());
    let mut text = String::new();
    for &id in &tok.encode("Hi there", false).unwrap() {
        let step = g.push(tok, id).unwrap();
        assert_eq!(step.stop, None);
        text.push_str(&step.text);
    }
    let last = g.push(tok, im_end).unwrap();
    assert_eq!((text.as_str(), last.stop), ("Hi there", Some(StopReason::Eog(im_end))));
    // ... unless EOG is ignored.
    let mut g = Generation::new(StopCriteria {
        ignore_eog: true,
        render_special: true,
        ..StopCriteria::default()
    });
    assert_eq!(g.push(tok, im_end).unwrap().text, "<|im_end|>");

    // max_tokens, with a character cut in half by the limit flushed as U+FFFD.
    let llama = tok.encode(" 🦙", false).unwrap();
    assert_eq!(llama.len(), 3);
    let mut g = Generation::new(StopCriteria {
        max_tokens: Some(2),
        ..StopCriteria::default()
    });
    assert_eq!(g.push(tok, llama[0]).unwrap().text, " ");
    let step = g.push(tok, llama[1]).unwrap();
    assert_eq!(
        (step.text.as_str(), step.stop),
        ("\u{FFFD}", Some(StopReason::MaxTokens))
    );
    assert_eq!(g.push(tok, llama[2]).unwrap().text, "");
    assert_eq!(g.n_tokens(), 2);
}
