//! Choosing the next token from logits: greedy (on the device: one u32 read back), or sampled
//! with temperature, top-k, top-p and a repetition penalty from a seeded generator.

use kiln::Tensor;

use crate::error::{Error, Result};

/// How the next token is chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    /// 0 is greedy (the argmax); above 0 the logits are divided by it and a token is drawn.
    pub temperature: f32,
    /// Draw only among the `top_k` most likely tokens (0: all).
    pub top_k: usize,
    /// Draw only among the most likely tokens whose probabilities sum to `top_p` (1: all).
    pub top_p: f32,
    /// Logits of tokens already in the sequence are divided by this when positive, multiplied
    /// when negative (llama.cpp's and Hugging Face's rule; 1: off).
    pub repetition_penalty: f32,
    /// The generator's seed.
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            seed: 0,
        }
    }
}

/// A sampler: the settings and the generator's state.
#[derive(Debug, Clone)]
pub struct Sampler {
    settings: Sampling,
    state: u64,
}

impl Sampler {
    /// A sampler with these settings. Errors: `InvalidRequest` for a negative or NaN
    /// temperature, `top_p` outside (0, 1], or a penalty that is not positive.
    pub fn new(settings: Sampling) -> Result<Sampler> {
        let s = &settings;
        let valid =
            s.temperature >= 0.0 && s.top_p > 0.0 && s.top_p <= 1.0 && s.repetition_penalty > 0.0;
        if !valid {
            return Err(Error::InvalidRequest(format!(
                "invalid sampling settings {s:?}"
            )));
        }
        Ok(Sampler {
            state: settings.seed ^ 0x9E37_79B9_7F4A_7C15,
            settings,
        })
    }

    /// Whether this sampler is greedy (no logits leave the device).
    pub fn is_greedy(&self) -> bool {
        self.settings.temperature == 0.0 && self.settings.repetition_penalty == 1.0
    }

    /// The next token from `logits` (`[1, vocab]`), given the sequence so far.
    pub fn next(&mut self, logits: &Tensor, history: &[u32]) -> Result<u32> {
        if self.is_greedy() {
            return Ok(logits.argmax(-1, false)?.to_vec_u32()?[0]);
        }
        let mut l = logits.to_vec()?;
        let s = &self.settings;
        if s.repetition_penalty != 1.0 {
            for &t in history {
                if let Some(x) = l.get_mut(t as usize) {
                    *x = if *x > 0.0 {
                        *x / s.repetition_penalty
                    } else {
                        *x * s.repetition_penalty
                    };
                }
            }
        }
        let argmax =
            |l: &[f32]| (0..l.len()).fold(0, |b, i| if l[i] > l[b] { i } else { b }) as u32;
        if s.temperature == 0.0 {
            return Ok(argmax(&l));
        }
        let mut order: Vec<usize> = (0..l.len()).filter(|&i| !l[i].is_nan()).collect();
        order.sort_by(|&a, &b| l[b].total_cmp(&l[a]));
        if s.top_k > 0 {
            order.truncate(s.top_k);
        }
        let top = l[order[0]];
        let mut p: Vec<f64> = order
            .iter()
            .map(|&i| (((l[i] - top) / s.temperature) as f64).exp())
            .collect();
        let sum: f64 = p.iter().sum();
        p.iter_mut().for_each(|x| *x /= sum);
        let mut keep = p.len();
        let mut acc = 0.0;
        for (i, &x) in p.iter().enumerate() {
            acc += x;
            if acc >= s.top_p as f64 {
                keep = i + 1;
                break;
            }
        }
        let total: f64 = p[..keep].iter().sum();
        let mut u = self.uniform() * total;
        for (i, &x) in p[..keep].iter().enumerate() {
            if u < x {
                return Ok(order[i] as u32);
            }
            u -= x;
        }
        Ok(order[keep - 1] as u32)
    }

    /// A uniform draw in [0, 1) (SplitMix64).
    fn uniform(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}
