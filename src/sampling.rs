//! Token sampling with llama.cpp's default chain (common/sampling.cpp, `common_sampler_init`):
//! repetition penalties → top-k → top-p → min-p → temperature → draw from the distribution.
//! Each stage follows the corresponding `llama_sampler_*_apply` in src/llama-sampler.cpp; the random draw uses our
//! own seeded generator, so seeded runs are reproducible here but not draw-for-draw equal to llama.cpp's mt19937.

mod stop;

pub use stop::{Generation, Step, StopCriteria, StopMatcher, StopReason, StopStatus};

use std::collections::{HashMap, VecDeque};

/// Sampling settings; the defaults are llama.cpp's (common/common.h, `common_params_sampling`).
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerParams {
    /// Logits are divided by this; `<= 0` samples greedily (argmax).
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens; `<= 0` keeps all.
    pub top_k: i32,
    /// Keep the smallest set whose probability reaches `top_p`; `>= 1` disables.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one; `<= 0` disables.
    pub min_p: f32,
    /// Divide positive / multiply negative logits of recently seen tokens by this; `1` disables.
    pub repeat_penalty: f32,
    /// Subtract `count * frequency_penalty` from a recent token's logit; `0` disables.
    pub frequency_penalty: f32,
    /// Subtract `presence_penalty` from every recent token's logit; `0` disables.
    pub presence_penalty: f32,
    /// How many of the last accepted tokens the penalties look at; `0` disables them.
    pub repeat_last_n: usize,
    /// Top-p and min-p keep at least this many tokens.
    pub min_keep: usize,
    /// `None` seeds from the clock (llama.cpp's `LLAMA_DEFAULT_SEED`).
    pub seed: Option<u64>,
}

impl Default for SamplerParams {
    fn default() -> Self {
        SamplerParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            repeat_last_n: 64,
            min_keep: 0,
            seed: None,
        }
    }
}

impl SamplerParams {
    /// Argmax sampling (temperature 0), everything else at its default.
    pub fn greedy() -> Self {
        SamplerParams {
            temperature: 0.0,
            ..Default::default()
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SamplingError {
    #[error("sampler parameter {name} = {value} is invalid: {why}")]
    BadParam {
        name: &'static str,
        value: f32,
        why: &'static str,
    },
    #[error("no logits to sample from")]
    Empty,
    #[error("logit {index} is NaN")]
    NaN { index: usize },
    #[error("token {id} is outside the {n_vocab} logits")]
    TokenOutOfRange { id: u32, n_vocab: usize },
}

/// A token still in the running, with its (possibly modified) logit and, after softmax, its probability.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub id: u32,
    pub logit: f32,
    pub p: f32,
}

/// A sampler with its penalty window and random state.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplerParams,
    rng: SplitMix64,
    /// The last `repeat_last_n` accepted tokens and how often each occurs among them.
    recent: VecDeque<u32>,
    counts: HashMap<u32, u32>,
    cands: Vec<Candidate>,
}

impl Sampler {
    pub fn new(params: SamplerParams) -> Result<Sampler, SamplingError> {
        let check = |name, value: f32, ok: bool, why| {
            if ok {
                Ok(())
            } else {
                Err(SamplingError::BadParam { name, value, why })
            }
        };
        let t = params.temperature;
        check("temperature", t, !t.is_nan(), "must be a number")?;
        check("top_p", params.top_p, params.top_p > 0.0, "must be > 0")?;
        check(
            "min_p",
            params.min_p,
            !params.min_p.is_nan() && params.min_p <= 1.0,
            "must be <= 1",
        )?;
        let rp = params.repeat_penalty;
        check("repeat_penalty", rp, rp > 0.0 && rp.is_finite(), "must be > 0")?;
        check(
            "frequency_penalty",
            params.frequency_penalty,
            params.frequency_penalty.is_finite(),
            "must be finite",
        )?;
        check(
            "presence_penalty",
            params.presence_penalty,
            params.presence_penalty.is_finite(),
            "must be finite",
        )?;
        let seed = params.seed.unwrap_or_else(clock_seed);
        Ok(Sampler {
            params,
            rng: SplitMix64(seed),
            recent: VecDeque::new(),
            counts: HashMap::new(),
            cands: Vec::new(),
        })
    }

    pub fn params(&self) -> &SamplerParams {
        &self.params
    }

    /// Picks the next token from `logits` (one per vocabulary entry). Call [`Sampler::accept`] with the token the
    /// caller keeps so the repetition penalty sees it.
    pub fn sample(&mut self, logits: &[f32]) -> Result<u32, SamplingError> {
        if self.params.temperature <= 0.0 {
            self.penalize(logits)?;
            // First maximum, so ties go to the lowest id.
            let best = self.cands.iter().fold(None, |best: Option<Candidate>, c| match best {
                Some(b) if b.logit >= c.logit => Some(b),
                _ => Some(*c),
            });
            return best.map(|c| c.id).ok_or(SamplingError::Empty);
        }
        self.filter(logits)?;
        let temp = self.params.temperature;
        for c in &mut self.cands {
            c.logit /= temp;
        }
        softmax(&mut self.cands);
        let target = self.rng.next_f64();
        let mut cum = 0.0f64;
        for c in &self.cands {
            cum += f64::from(c.p);
            if cum >= target {
                return Ok(c.id);
            }
        }
        // Rounding left the sum just under the target: the last candidate is the one.
        self.cands.last().map(|c| c.id).ok_or(SamplingError::Empty)
    }

    /// The candidates left after penalties, top-k, top-p and min-p (before temperature), most likely first, with
    /// their probabilities within that set.
    pub fn candidates(&mut self, logits: &[f32]) -> Result<&[Candidate], SamplingError> {
        self.filter(logits)?;
        softmax(&mut self.cands);
        Ok(&self.cands)
    }

    /// Records a generated (or prompt) token for the repetition penalty window (`llama_sampler_accept`).
    pub fn accept(&mut self, id: u32) {
        let n = self.params.repeat_last_n;
        if n == 0 {
            return;
        }
        if self.recent.len() >= n {
            if let Some(old) = self.recent.pop_front() {
                if let Some(c) = self.counts.get_mut(&old) {
                    *c -= 1;
                    if *c == 0 {
                        self.counts.remove(&old);
                    }
                }
            }
        }
        self.recent.push_back(id);
        *self.counts.entry(id).or_insert(0) += 1;
    }

    /// Forgets the penalty window (a new conversation); the random state goes on.
    pub fn reset(&mut self) {
        self.recent.clear();
        self.counts.clear();
    }

    /// Fills `cands` with every token and applies the penalties (`llama_sampler_penalties_apply`).
    fn penalize(&mut self, logits: &[f32]) -> Result<(), SamplingError> {
        if logits.is_empty() {
            return Err(SamplingError::Empty);
        }
        if let Some(index) = logits.iter().position(|l| l.is_nan()) {
            return Err(SamplingError::NaN { index });
        }
        self.cands.clear();
        self.cands
            .extend(logits.iter().enumerate().map(|(i, &logit)| Candidate {
                id: i as u32,
                logit,
                p: 0.0,
            }));
        let p = &self.params;
        let active =
            p.repeat_last_n > 0 && (p.repeat_penalty != 1.0 || p.frequency_penalty != 0.0 || p.presence_penalty != 0.0);
        if active {
            for (&id, &count) in &self.counts {
                let Some(c) = self.cands.get_mut(id as usize) else {
                    return Err(SamplingError::TokenOutOfRange {
                        id,
                        n_vocab: logits.len(),
                    });
                };
                if c.logit <= 0.0 {
                    c.logit *= p.repeat_penalty;
                } else {
                    c.logit /= p.repeat_penalty;
                }
                c.logit -= count as f32 * p.frequency_penalty + p.presence_penalty;
            }
        }
        Ok(())
    }

    /// Penalties, then top-k, top-p and min-p; leaves `cands` sorted by logit, descending.
    fn filter(&mut self, logits: &[f32]) -> Result<(), SamplingError> {
        self.penalize(logits)?;
        let p = self.params.clone();
        let cands = &mut self.cands;
        // Descending logit, then ascending id, so equal logits keep a fixed order.
        let order = |a: &Candidate, b: &Candidate| b.logit.total_cmp(&a.logit).then(a.id.cmp(&b.id));
        let k = if p.top_k <= 0 {
            cands.len()
        } else {
            (p.top_k as usize).min(cands.len())
        };
        if k < cands.len() {
            cands.select_nth_unstable_by(k - 1, order);
            cands.truncate(k);
        }
        cands.sort_unstable_by(order);

        // top-p (`llama_sampler_top_p_apply`): softmax over what is left, keep until the mass reaches p.
        if p.top_p < 1.0 {
            softmax(cands);
            let mut cum = 0.0f32;
            let mut keep = cands.len();
            for (i, c) in cands.iter().enumerate() {
                cum += c.p;
                if cum >= p.top_p && i + 1 >= p.min_keep {
                    keep = i + 1;
                    break;
                }
            }
            cands.truncate(keep);
        }

        // min-p (`llama_sampler_min_p_apply`): p_i >= min_p * p_max, i.e. logit_i >= logit_max + ln(min_p).
        if p.min_p > 0.0 && !cands.is_empty() {
            let min_logit = cands[0].logit + p.min_p.ln();
            let keep = cands
                .iter()
                .enumerate()
                .skip(1)
                .find(|&(i, c)| c.logit < min_logit && i >= p.min_keep)
                .map_or(cands.len(), |(i, _)| i);
            cands.truncate(keep);
        }
        Ok(())
    }
}

/// Sets each candidate's `p` to its softmax probability within the set.
fn softmax(cands: &mut [Candidate]) {
    let Some(max) = cands.iter().map(|c| c.logit).reduce(f32::max) else {
        return;
    };
    let mut sum = 0.0f32;
    for c in cands.iter_mut() {
        c.p = (c.logit - max).exp();
        sum += c.p;
    }
    for c in cands.iter_mut() {
        c.p /= sum;
    }
}

fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, seedable, plenty for sampling.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_reference_values() {
        // First outputs for seed 0 from the reference implementation (Vigna's splitmix64.c).
        let mut r = SplitMix64(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }
}
