//! Routing skew for benchmark models: a seeded choice of "hot" experts per layer whose router rows are scaled up,
//! so that their logits spread wider and win the top-k more often, as the trained models' experts do (a minority
//! of experts takes most selections; engine-notes.md, expert locality).
//!
//! The router logit of expert e for a residual x is `w_e · x`; with rows drawn i.i.d. N(0, σ²) it is, for a
//! given x, N(0, σ²|x|²) independently per expert, so which experts win the top-k does not depend on |x| and
//! a hot row scaled by `s` wins as if its logit were drawn with s times the spread. The scale is chosen so that
//! both released shapes land in the paper's bands (see [`HOT_SCALE`]).

use super::Rng;

/// Router-row scale of the hot experts.
pub const HOT_SCALE: f32 = 8.0;

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

/// Per-expert router-row scale of `layer`: [`HOT_SCALE`] for the hot experts, 1 for the rest.
pub fn router_row_scale(seed: u64, layer: u64, n_expert: u64, routing_skew: f32) -> Vec<f32> {
    let mut s = vec![1.0; n_expert as usize];
    for e in hot_experts(seed, layer, n_expert, routing_skew) {
        s[e as usize] = HOT_SCALE;
    }
    s
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
        let s = router_row_scale(0, 3, 32, 0.25);
        assert_eq!(s.iter().filter(|&&x| x == HOT_SCALE).count(), 8);
        assert!(a.iter().all(|&e| s[e as usize] == HOT_SCALE));
    }
}
