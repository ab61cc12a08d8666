//! Token sampling: turns the model's logits into the next token id.
//!
//! The pipeline is the one llama.cpp and the SmolLM3 model card assume: logit bias, then the
//! repeat, frequency and presence penalties, then temperature, top-k, top-p (nucleus) and
//! min-p, then a weighted draw. Temperature 0 is greedy.
//! A vocabulary has 128256 entries, so nothing here sorts the whole of it: top-k uses a linear
//! selection, and top-p sorts only a growing head of the distribution until it holds enough mass.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// How to pick tokens; defaults are the ones recommended for SmolLM3.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// Softmax temperature; 0 picks the most likely token every time.
    pub temperature: f32,
    /// Keep the smallest set of tokens whose probabilities add up to at least this (0 < p ≤ 1).
    pub top_p: f32,
    /// Keep only the k most likely tokens; 0 turns the filter off.
    pub top_k: usize,
    /// Drop tokens less likely than `min_p` times the most likely one (0 turns it off).
    pub min_p: f32,
    /// Divides positive logits (multiplies negative ones) of recently seen tokens; 1 is off.
    pub repeat_penalty: f32,
    /// How many of the most recent tokens the repeat penalty looks at.
    pub repeat_last_n: usize,
    /// Seed for reproducible output; `None` draws a fresh one.
    pub seed: Option<u64>,
    /// The most tokens one reply may have.
    pub max_tokens: usize,
    /// Subtracted from a token's logit once for every time this reply already holds it
    /// (OpenAI's `frequency_penalty`, −2 to 2; 0 is off).
    pub frequency_penalty: f32,
    /// Subtracted once from the logit of every token this reply already holds (OpenAI's
    /// `presence_penalty`, −2 to 2; 0 is off).
    pub presence_penalty: f32,
    /// Added to the logits of these token ids before anything else (OpenAI's `logit_bias`,
    /// −100 to 100 each; −100 bans a token, 100 all but forces it).
    pub logit_bias: Vec<(u32, f32)>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.6,
            top_p: 0.95,
            top_k: 0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: None,
            max_tokens: 2048,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            logit_bias: Vec::new(),
        }
    }
}

impl SamplingParams {
    /// Greedy decoding: always the most likely token.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }

    /// Every value out of its range, as (field, what is allowed): the one set of ranges the
    /// settings form, the API and the command line all check against.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut bad = Vec::new();
        let mut check = |ok: bool, field: &'static str, allowed: &str, got: String| {
            if !ok {
                bad.push((field, format!("{field} must be {allowed} (got {got})")));
            }
        };
        let t = self.temperature;
        check(
            t.is_finite() && (0.0..=MAX_TEMPERATURE).contains(&t),
            "temperature",
            "between 0 and 2; 0 means always the most likely token",
            t.to_string(),
        );
        check(
            self.top_p > 0.0 && self.top_p <= 1.0,
            "top_p",
            "above 0 and at most 1; 1 turns it off",
            self.top_p.to_string(),
        );
        check(
            self.top_k <= MAX_TOP_K,
            "top_k",
            "at most 1000; 0 turns it off",
            self.top_k.to_string(),
        );
        check(
            (0.0..1.0).contains(&self.min_p),
            "min_p",
            "at least 0 and below 1; 0 turns it off",
            self.min_p.to_string(),
        );
        let r = self.repeat_penalty;
        check(
            r.is_finite() && (0.5..=2.0).contains(&r),
            "repeat_penalty",
            "between 0.5 and 2; 1 turns it off",
            r.to_string(),
        );
        for (value, field) in [
            (self.frequency_penalty, "frequency_penalty"),
            (self.presence_penalty, "presence_penalty"),
        ] {
            check(
                value.is_finite() && (-2.0..=2.0).contains(&value),
                field,
                "between -2 and 2; 0 turns it off",
                value.to_string(),
            );
        }
        if let Some((id, bias)) = self
            .logit_bias
            .iter()
            .find(|(_, b)| !(b.is_finite() && (-100.0..=100.0).contains(b)))
        {
            check(
                false,
                "logit_bias",
                "between -100 and 100 for each token",
                format!("{bias} for token {id}"),
            );
        }
        check(
            self.max_tokens >= 1,
            "max_tokens",
            "at least 1",
            self.max_tokens.to_string(),
        );
        bad
    }

    /// Checks the values, with a message meant for the person who set them (the first
    /// problem [`Self::problems`] finds).
    pub fn validate(&self) -> Result<(), String> {
        match self.problems().into_iter().next() {
            Some((_, message)) => Err(message),
            None => Ok(()),
        }
    }
}

/// The highest temperature accepted; above it SmolLM3's output is noise.
pub const MAX_TEMPERATURE: f32 = 2.0;

/// The largest top-k accepted (0 turns the filter off).
pub const MAX_TOP_K: usize = 1000;

/// Picks tokens from logits; holds the random state and reusable buffers.
#[derive(Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    /// Candidate `(id, weight)` pairs, reused across calls to avoid a 128k allocation per token.
    candidates: Vec<(u32, f32)>,
    /// Distinct recent ids for the repeat penalty.
    seen: Vec<u32>,
    /// How often each token was picked so far in this reply (for the frequency and presence
    /// penalties), kept only when one of them is on.
    counts: std::collections::HashMap<u32, u32>,
}

/// How many candidates top-p sorts first; most distributions concentrate their mass in far
/// fewer tokens than this, so one partial selection usually suffices.
const TOP_P_FIRST_GUESS: usize = 64;

impl Sampler {
    /// A sampler for these parameters (assumed valid, see [`SamplingParams::validate`]).
    pub fn new(params: &SamplingParams) -> Self {
        let rng = match params.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_entropy(),
        };
        Self {
            params: params.clone(),
            rng,
            candidates: Vec::new(),
            seen: Vec::new(),
            counts: std::collections::HashMap::new(),
        }
    }

    /// The parameters in use.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token. `logits` is modified in place (repeat penalty, temperature);
    /// `recent` is the token history, of which the last `repeat_last_n` are penalised.
    pub fn sample(&mut self, logits: &mut [f32], recent: &[u32]) -> u32 {
        let next = self.pick(logits, recent);
        if self.params.frequency_penalty != 0.0 || self.params.presence_penalty != 0.0 {
            *self.counts.entry(next).or_default() += 1;
        }
        next
    }

    fn pick(&mut self, logits: &mut [f32], recent: &[u32]) -> u32 {
        for &(id, bias) in &self.params.logit_bias {
            if let Some(l) = logits.get_mut(id as usize) {
                *l += bias;
            }
        }
        self.apply_repeat_penalty(logits, recent);
        let (frequency, presence) = (self.params.frequency_penalty, self.params.presence_penalty);
        for (&id, &n) in &self.counts {
            if let Some(l) = logits.get_mut(id as usize) {
                *l -= frequency * n as f32 + presence;
            }
        }
        let p = &self.params;
        if p.temperature <= 0.0 || p.top_k == 1 {
            return argmax(logits);
        }
        let inv_t = 1.0 / p.temperature;
        for l in logits.iter_mut() {
            *l = if l.is_nan() {
                f32::NEG_INFINITY
            } else {
                *l * inv_t
            };
        }

        let cands = &mut self.candidates;
        cands.clear();
        cands.extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l)));
        if p.top_k > 0 && p.top_k < cands.len() {
            cands.select_nth_unstable_by(p.top_k - 1, by_weight_desc);
            cands.truncate(p.top_k);
        }
        // Weights relative to the best logit: the best gets 1, nothing overflows.
        let max = cands.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max);
        if !max.is_finite() {
            // Everything masked, or an infinite logit that would turn the weights into NaN:
            // the most likely token is the only sensible answer.
            return argmax(logits);
        }
        for c in cands.iter_mut() {
            c.1 = (c.1 - max).exp();
        }
        if p.top_p < 1.0 {
            keep_nucleus(cands, p.top_p);
        }
        if p.min_p > 0.0 {
            // The best candidate has weight 1, so the threshold is min_p itself.
            let min_p = p.min_p;
            cands.retain(|c| c.1 >= min_p);
        }
        draw(cands, &mut self.rng)
    }

    /// Makes recently produced tokens less likely, once per distinct token.
    fn apply_repeat_penalty(&mut self, logits: &mut [f32], recent: &[u32]) {
        let penalty = self.params.repeat_penalty;
        if penalty == 1.0 || self.params.repeat_last_n == 0 {
            return;
        }
        let window = &recent[recent.len().saturating_sub(self.params.repeat_last_n)..];
        self.seen.clear();
        self.seen.extend_from_slice(window);
        self.seen.sort_unstable();
        self.seen.dedup();
        for &id in &self.seen {
            if let Some(l) = logits.get_mut(id as usize) {
                *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
            }
        }
    }
}

/// Orders candidates by weight, largest first; NaN never occurs (filtered before).
fn by_weight_desc(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// The natural-log probability of `chosen` under the softmax of `logits`, and the `top`
/// likeliest ids with theirs, most likely first.
pub fn log_probs(logits: &[f32], chosen: u32, top: usize) -> (f32, Vec<(u32, f32)>) {
    let max = logits
        .iter()
        .copied()
        .filter(|l| !l.is_nan())
        .fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits
        .iter()
        .filter(|l| !l.is_nan())
        .map(|&l| f64::from(l - max).exp())
        .sum();
    let lse = max + sum.ln() as f32;
    let lp = |l: f32| {
        if l.is_nan() {
            f32::NEG_INFINITY
        } else {
            l - lse
        }
    };
    let chosen_lp = logits
        .get(chosen as usize)
        .map_or(f32::NEG_INFINITY, |&l| lp(l));
    let mut best: Vec<(u32, f32)> = Vec::new();
    if top > 0 {
        let mut all: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, lp(l)))
            .collect();
        let k = top.min(all.len());
        if k < all.len() {
            all.select_nth_unstable_by(k - 1, by_weight_desc);
            all.truncate(k);
        }
        all.sort_by(by_weight_desc);
        best = all;
    }
    (chosen_lp, best)
}

/// The index of the largest logit; ties go to the lowest id, NaN never wins.
pub(crate) fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_val = f32::NEG_INFINITY;
    for (i, &l) in logits.iter().enumerate() {
        if l > best_val {
            best = i;
            best_val = l;
        }
    }
    best as u32
}

/// Keeps the smallest set of most likely candidates whose mass reaches `top_p` of the total,
/// leaving them sorted by weight. Sorts only as large a head as needed.
fn keep_nucleus(cands: &mut Vec<(u32, f32)>, top_p: f32) {
    let total: f64 = cands.iter().map(|c| c.1 as f64).sum();
    let target = top_p as f64 * total;
    // Tokens lighter than this can never be in the nucleus: all of them together weigh less
    // than the `1 - top_p` share it leaves out. Dropping them first makes the selection cheap
    // on the peaked distributions a language model produces.
    let floor = ((1.0 - top_p as f64) * total / cands.len() as f64) as f32;
    if floor > 0.0 {
        cands.retain(|c| c.1 >= floor);
    }
    let mut head = TOP_P_FIRST_GUESS.min(cands.len());
    loop {
        if head < cands.len() {
            cands.select_nth_unstable_by(head - 1, by_weight_desc);
        }
        cands[..head].sort_unstable_by(by_weight_desc);
        let mut mass = 0.0f64;
        for (i, c) in cands[..head].iter().enumerate() {
            mass += c.1 as f64;
            if mass >= target {
                cands.truncate(i + 1);
                return;
            }
        }
        if head == cands.len() {
            // Rounding left the target just out of reach: everything stays.
            return;
        }
        head = (head * 4).min(cands.len());
    }
}

/// Draws one candidate with probability proportional to its weight.
fn draw(cands: &[(u32, f32)], rng: &mut StdRng) -> u32 {
    let total: f64 = cands.iter().map(|c| c.1 as f64).sum();
    let mut r = rng.gen::<f64>() * total;
    for c in cands {
        r -= c.1 as f64;
        if r < 0.0 {
            return c.0;
        }
    }
    // Only reachable through rounding: the last candidate with any weight.
    cands
        .iter()
        .rev()
        .find(|c| c.1 > 0.0)
        .map_or(cands[0].0, |c| c.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32) -> SamplingParams {
        SamplingParams {
            temperature,
            top_p: 1.0,
            seed: Some(7),
            ..SamplingParams::default()
        }
    }

    /// Logits whose softmax (at temperature 1) is exactly `probs`.
    fn logits_for(probs: &[f32]) -> Vec<f32> {
        probs.iter().map(|p| p.ln()).collect()
    }

    fn counts(p: &SamplingParams, logits: &[f32], draws: usize) -> Vec<usize> {
        let mut s = Sampler::new(p);
        let mut counts = vec![0; logits.len()];
        for _ in 0..draws {
            counts[s.sample(&mut logits.to_vec(), &[]) as usize] += 1;
        }
        counts
    }

    /// A vocabulary-sized distribution with a few strong tokens and a long noisy tail.
    fn big_logits(seed: u64) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..128_256).map(|_| rng.gen_range(-4.0f32..4.0)).collect()
    }

    #[test]
    fn defaults_follow_the_model_card() {
        let p = SamplingParams::default();
        assert_eq!(
            (p.temperature, p.top_p, p.top_k, p.min_p),
            (0.6, 0.95, 0, 0.0)
        );
        assert_eq!(
            (p.repeat_penalty, p.repeat_last_n, p.max_tokens),
            (1.0, 64, 2048)
        );
        assert!(p.validate().is_ok());
        let partial: SamplingParams = serde_json::from_str(r#"{"temperature": 0.2}"#).unwrap();
        assert_eq!(
            partial,
            SamplingParams {
                temperature: 0.2,
                ..SamplingParams::default()
            }
        );
    }

    #[test]
    fn validation_explains_bad_values() {
        let d = SamplingParams::default;
        #[rustfmt::skip]
        let bad = [
            SamplingParams { temperature: -0.1, ..d() },
            SamplingParams { temperature: f32::NAN, ..d() },
            SamplingParams { temperature: 2.5, ..d() },
            SamplingParams { top_p: 0.0, ..d() },
            SamplingParams { top_p: 1.5, ..d() },
            SamplingParams { top_k: 1001, ..d() },
            SamplingParams { min_p: -0.5, ..d() },
            SamplingParams { repeat_penalty: 0.0, ..d() },
            SamplingParams { max_tokens: 0, ..d() },
        ];
        for p in &bad {
            assert_eq!(p.problems().len(), 1, "{p:?}");
        }
        for p in bad {
            let msg = p.validate().unwrap_err();
            assert!(msg.contains("must"), "{msg}");
        }
        assert!(SamplingParams::greedy().validate().is_ok());
    }

    #[test]
    fn greedy_takes_the_argmax_and_ties_go_to_the_lowest_id() {
        let mut s = Sampler::new(&SamplingParams::greedy());
        assert_eq!(s.sample(&mut [0.1, 3.0, -2.0, 2.9], &[]), 1);
        assert_eq!(s.sample(&mut [1.0, 5.0, 5.0, 5.0], &[]), 1);
        assert_eq!(s.sample(&mut [f32::NAN, -1.0, f32::NAN], &[]), 1);
    }

    #[test]
    fn infinite_and_masked_logits_do_not_break_sampling() {
        let mut s = Sampler::new(&SamplingParams {
            seed: Some(3),
            ..Default::default()
        });
        assert_eq!(s.sample(&mut [0.0, f32::INFINITY, 1.0], &[]), 1);
        assert_eq!(s.sample(&mut [f32::NEG_INFINITY; 4], &[]), 0);
        for _ in 0..50 {
            let t = s.sample(&mut [f32::NEG_INFINITY, 0.0, f32::NAN, 0.0], &[]);
            assert!(t == 1 || t == 3, "masked or NaN token {t} drawn");
        }
    }

    #[test]
    fn same_seed_gives_the_same_sequence() {
        let logits = big_logits(1);
        let run = |seed| {
            let mut s = Sampler::new(&SamplingParams {
                seed: Some(seed),
                ..Default::default()
            });
            (0..50)
                .map(|_| s.sample(&mut logits.clone(), &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }

    #[test]
    fn top_k_one_is_greedy() {
        let logits = big_logits(2);
        let want = argmax(&logits);
        let p = SamplingParams {
            top_k: 1,
            temperature: 1.5,
            top_p: 1.0,
            ..Default::default()
        };
        let mut s = Sampler::new(&p);
        for _ in 0..20 {
            assert_eq!(s.sample(&mut logits.clone(), &[]), want);
        }
    }

    #[test]
    fn tiny_top_p_is_greedy() {
        let logits = big_logits(3);
        let want = argmax(&logits);
        let p = SamplingParams {
            top_p: 1e-6,
            temperature: 1.0,
            seed: Some(1),
            ..Default::default()
        };
        let mut s = Sampler::new(&p);
        for _ in 0..20 {
            assert_eq!(s.sample(&mut logits.clone(), &[]), want);
        }
    }

    #[test]
    fn top_k_keeps_only_the_k_best() {
        let logits = big_logits(4);
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
        let top: Vec<u32> = order[..5].to_vec();
        let p = SamplingParams {
            top_k: 5,
            temperature: 5.0,
            top_p: 1.0,
            seed: Some(9),
            ..Default::default()
        };
        let mut s = Sampler::new(&p);
        let mut hit = std::collections::HashSet::new();
        for _ in 0..500 {
            let t = s.sample(&mut logits.clone(), &[]);
            assert!(top.contains(&t), "{t} is not among the top 5");
            hit.insert(t);
        }
        assert_eq!(hit.len(), 5, "a hot temperature reaches all five");
    }

    #[test]
    fn top_p_cuts_the_tail_at_the_requested_mass() {
        // Probabilities 0.5, 0.3, 0.15, 0.05: top_p 0.75 keeps exactly the first two.
        let logits = logits_for(&[0.15, 0.5, 0.05, 0.3]);
        let p = SamplingParams {
            top_p: 0.75,
            ..params(1.0)
        };
        let c = counts(&p, &logits, 4000);
        assert_eq!((c[0], c[2]), (0, 0), "{c:?}");
        let share = c[1] as f64 / 4000.0;
        assert!(
            (share - 0.625).abs() < 0.03,
            "0.5/0.8 expected, got {share}"
        );
    }

    #[test]
    fn top_p_on_a_flat_vocabulary_grows_its_head() {
        // Uniform over 128256: half the mass needs 64128 tokens, far past the first guess.
        let mut cands: Vec<(u32, f32)> = (0..128_256).map(|i| (i, 1.0)).collect();
        keep_nucleus(&mut cands, 0.5);
        assert_eq!(cands.len(), 64_128);
        let mut cands: Vec<(u32, f32)> = vec![(0, 0.1), (1, 1.0), (2, 0.5)];
        keep_nucleus(&mut cands, 1.0 - 1e-9);
        assert_eq!(cands.iter().map(|c| c.0).collect::<Vec<_>>(), vec![1, 2, 0]);
    }

    #[test]
    fn min_p_drops_tokens_far_below_the_best() {
        // Relative to the best (0.6): 0.25 is above 0.3×0.6 = 0.18, 0.1 and 0.05 are below.
        let logits = logits_for(&[0.1, 0.6, 0.25, 0.05]);
        let p = SamplingParams {
            min_p: 0.3,
            ..params(1.0)
        };
        let c = counts(&p, &logits, 3000);
        assert_eq!((c[0], c[3]), (0, 0), "{c:?}");
        assert!(c[1] > 0 && c[2] > 0, "{c:?}");
    }

    #[test]
    fn log_probs_are_a_log_softmax_with_the_likeliest_first() {
        let logits = [1.0f32, 3.0, 2.0, f32::NAN];
        let (lp, top) = log_probs(&logits, 2, 2);
        let z: f32 = [1.0f32, 3.0, 2.0].iter().map(|l| l.exp()).sum();
        assert!((lp - (2.0f32.exp() / z).ln()).abs() < 1e-5, "{lp}");
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), [1, 2]);
        assert!((top[0].1 - (3.0f32.exp() / z).ln()).abs() < 1e-5);
        assert!(log_probs(&logits, 0, 0).1.is_empty());
    }

    #[test]
    fn logit_bias_and_the_openai_penalties_change_the_choice() {
        let greedy = |params: SamplingParams| Sampler::new(&params);
        // Bias: a ban and a push.
        let mut s = greedy(SamplingParams {
            logit_bias: vec![(0, -100.0), (2, 5.0)],
            ..SamplingParams::greedy()
        });
        assert_eq!(s.sample(&mut [3.0, 2.0, 0.0], &[]), 2);
        // Frequency: each pick of token 0 costs it 1.5, so the second pick goes to token 1.
        let mut s = greedy(SamplingParams {
            frequency_penalty: 1.5,
            ..SamplingParams::greedy()
        });
        assert_eq!(s.sample(&mut [3.0, 2.0], &[]), 0);
        assert_eq!(s.sample(&mut [3.0, 2.0], &[]), 1);
        // Presence: a flat 0.5 once present is not enough to pass 1 logit, 2 is.
        let mut s = greedy(SamplingParams {
            presence_penalty: 0.5,
            ..SamplingParams::greedy()
        });
        assert_eq!(s.sample(&mut [3.0, 2.0], &[]), 0);
        assert_eq!(s.sample(&mut [3.0, 2.0], &[]), 0);
        let mut s = greedy(SamplingParams {
            presence_penalty: 2.0,
            ..SamplingParams::greedy()
        });
        assert_eq!(s.sample(&mut [3.0, 2.0], &[]), 0);
        assert_eq!(s.sample(&mut [3.0, 2.0], &[]), 1);
        // Out of range values are named.
        let bad = SamplingParams {
            frequency_penalty: 2.5,
            logit_bias: vec![(7, 101.0)],
            ..SamplingParams::default()
        };
        let fields: Vec<_> = bad.problems().into_iter().map(|(f, _)| f).collect();
        assert_eq!(fields, ["frequency_penalty", "logit_bias"]);
    }

    #[test]
    fn repeat_penalty_changes_the_choice() {
        let logits = [2.0f32, 1.8, -1.0];
        let mut plain = Sampler::new(&SamplingParams::greedy());
        assert_eq!(plain.sample(&mut logits.clone(), &[0, 0, 0]), 0);
        let p = SamplingParams {
            repeat_penalty: 1.3,
            ..SamplingParams::greedy()
        };
        let mut s = Sampler::new(&p);
        // Token 0 was used (three times, penalised once): 2.0/1.3 < 1.8.
        let mut l = logits;
        assert_eq!(s.sample(&mut l, &[0, 0, 0]), 1);
        assert!((l[0] - 2.0 / 1.3).abs() < 1e-6);
        // Negative logits get more negative, and only the last `repeat_last_n` count.
        let p = SamplingParams {
            repeat_penalty: 2.0,
            repeat_last_n: 2,
            ..SamplingParams::greedy()
        };
        let mut s = Sampler::new(&p);
        let mut l = [1.0f32, 0.5, -1.0];
        s.sample(&mut l, &[0, 2, 1, 99_999]);
        assert_eq!(l, [1.0, 0.25, -1.0]);
    }

    #[test]
    fn draws_follow_the_distribution() {
        let probs = [0.5f32, 0.3, 0.15, 0.05];
        let n = 20_000;
        let c = counts(&params(1.0), &logits_for(&probs), n);
        for (i, &p) in probs.iter().enumerate() {
            let share = c[i] as f64 / n as f64;
            assert!(
                (share - p as f64).abs() < 0.015,
                "token {i}: {share} vs {p}"
            );
        }
        // Temperature 0.5 squares the odds: 0.5² : 0.3² = 25 : 9.
        let c = counts(&params(0.5), &logits_for(&probs), n);
        let ratio = c[0] as f64 / c[1] as f64;
        assert!((ratio - 25.0 / 9.0).abs() < 0.25, "ratio {ratio}");
    }
}
