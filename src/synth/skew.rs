//! Routing skew for benchmark models: a seeded choice of "hot" experts per layer that take most top-k selections,
//! as the trained models' experts do (70-80% of experts below 0.14 activation frequency, the rest at 0.4-0.6;
//! engine-notes.md, expert locality).
//!
//! Why not just scale the hot router rows: in a random-weight model the residual stream soon carries a large
//! token-independent component m (attention averages values over the context), so the logit of expert e is
//! dominated by `w_e · m`, a per-expert constant of random sign that grows with depth. Even uniform weights then
//! route most tokens to a few arbitrary experts per layer, and scaled hot rows would make half the hot set dead.
//! So with a skew the router reads only a part of the residual that no layer writes:
//!
//! - `route` dims (the last 32 or 64 of the hidden size): the token embedding's values, never written by
//!   attention (o_proj rows zero) or experts (down rows zero), so the router sees the token's own random
//!   vector at every layer: logits ~ N(0, σ²) per token, σ = 0.02 · 0.02 · √|route|;
//! - a `bias` block of 32 dims just before them, constant [`EMBED_BIAS`] in every embedding row (a whole Q4_0
//!   block of equal values quantises exactly) and never written either: a bias channel. Hot experts' router
//!   rows read it with a weight that adds [`HOT_BIAS`]·σ to their logits.
//!
//! `--token-routing` without a skew uses the same layout with no hot experts: near-uniform routing.
//!
//! With independent N(0, 1) logits and the hot ones shifted by 2, top-4 of 32 with 8 hot gives the hot experts
//! a frequency of about 0.45 and the others 0.02; top-6 of 64 with 16 hot gives 0.35 and 0.01 (the most 16 hot
//! experts can share of 6 selections per token is 6/16 = 0.375).

use std::ops::Range;

use super::Rng;

/// Hot experts' logit shift, in units of the router logits' spread (σ).
pub const HOT_BIAS: f32 = 2.0;
/// The embedding's value in the bias block.
pub const EMBED_BIAS: f32 = 0.02;
/// Width of the bias block (one Q4_0 block).
pub const BIAS_DIMS: u64 = 32;

/// Which hidden dims the skewed router reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteDims {
    /// The constant bias block.
    pub bias: Range<u64>,
    /// The token-embedding dims.
    pub route: Range<u64>,
}

impl RouteDims {
    /// For hidden size `h` (a multiple of 32, at least 128 so that most of the stream stays writable).
    pub fn of(h: u64) -> Result<RouteDims, String> {
        if h < 128 || h % 32 != 0 {
            return Err(format!("needs hidden_size a multiple of 32 and at least 128, not {h}"));
        }
        let n_route = if h >= 512 { 64 } else { 32 };
        let route = h - n_route..h;
        Ok(RouteDims {
            bias: route.start - BIAS_DIMS..route.start,
            route,
        })
    }

    /// Dims that attention and experts must not write (bias block and route dims).
    pub fn reserved(&self) -> Range<u64> {
        self.bias.start..self.route.end
    }

    /// Router weight of each bias dim for a hot expert: the 32 dims together add `HOT_BIAS · σ`.
    pub fn hot_bias_weight(&self) -> f32 {
        let sigma = 0.02 * 0.02 * ((self.route.end - self.route.start) as f32).sqrt();
        HOT_BIAS * sigma / (BIAS_DIMS as f32 * EMBED_BIAS)
    }

    /// Weight of each bias dim in an expert gate row for a gate shift: the 32 dims together lower the gate's
    /// pre-activation by `shift` where the residual's rms is 1 (the normed bias block is `EMBED_BIAS / rms`).
    pub fn gate_bias_weight(&self, shift: f32) -> f32 {
        -shift / ((self.bias.end - self.bias.start) as f32 * EMBED_BIAS)
    }
}

/// Number of hot experts for a skew (at least one, at most all but one).
pub fn n_hot(n_expert: u64, routing_skew: f32) -> u64 {
    ((routing_skew as f64 * n_expert as f64).round() as u64).clamp(1, n_expert.saturating_sub(1).max(1))
}

/// The hot experts of `layer`, ascending: a seeded partial Fisher-Yates shuffle of the layer's experts, its own
/// stream per layer (so the choice does not depend on the layer count).
pub fn hot_experts(seed: u64, layer: u64, n_expert: u64, routing_skew: f32) -> Vec<u64> {
    let mut ids: Vec<u64> = (0..n_expert).collect();
    let mut rng = Rng::new(seed ^ 0x686f_745f_6578_7073 ^ layer.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let k = n_hot(n_expert, routing_skew) as usize;
    for i in 0..k {
        let j = i + (rng.next_u64() % (n_expert - i as u64)) as usize;
        ids.swap(i, j);
    }
    let mut hot = ids[..k].to_vec();
    hot.sort_unstable();
    hot
}

/// Per-expert weight on the bias block for `layer`: [`RouteDims::hot_bias_weight`] for hot experts, 0 otherwise.
pub fn router_bias_weights(dims: &RouteDims, seed: u64, layer: u64, n_expert: u64, routing_skew: f32) -> Vec<f32> {
    let mut w = vec![0.0; n_expert as usize];
    for e in hot_experts(seed, layer, n_expert, routing_skew) {
        w[e as usize] = dims.hot_bias_weight();
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hot_set_is_seeded_per_layer_and_sized_by_skew() {
        let a = hot_experts(0, 3, 32, 0.25);
        assert_eq!(a.len(), 8);
        assert!(a.windows(2).all(|w| w[0] < w[1]) && a.iter().all(|&e| e < 32));
        assert_eq!(a, hot_experts(0, 3, 32, 0.25));
        assert_ne!(a, hot_experts(0, 4, 32, 0.25));
        assert_ne!(a, hot_experts(1, 3, 32, 0.25));
        assert_eq!(hot_experts(0, 0, 64, 0.25).len(), 16);
        assert_eq!(hot_experts(0, 0, 4, 0.01).len(), 1);
        let d = RouteDims::of(1536).unwrap();
        assert_eq!((d.bias.clone(), d.route.clone()), (1440..1472, 1472..1536));
        let w = router_bias_weights(&d, 0, 3, 32, 0.25);
        assert_eq!(w.iter().filter(|&&x| x > 0.0).count(), 8);
        assert!(a.iter().all(|&e| w[e as usize] == d.hot_bias_weight()));
        // The bias block adds HOT_BIAS σ: 32 · EMBED_BIAS · weight.
        let sigma = 0.02f32 * 0.02 * 8.0;
        assert!((32.0 * EMBED_BIAS * d.hot_bias_weight() - HOT_BIAS * sigma).abs() < 1e-7);
        assert!(RouteDims::of(64).is_err() && RouteDims::of(200).is_err());
    }
}
