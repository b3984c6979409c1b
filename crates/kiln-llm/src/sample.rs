//! Choosing the next token from logits on their device (one u32 read back): greedy, or drawn
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

    /// Whether this sampler is greedy (no draw).
    pub fn is_greedy(&self) -> bool {
        self.settings.temperature == 0.0
    }

    /// The next token from `logits` (`[1, vocab]` or `[vocab]`), given the sequence so far:
    /// [`Sampler::pick`], read back (one u32).
    pub fn next(&mut self, logits: &Tensor, history: &[u32]) -> Result<u32> {
        Ok(self.pick(logits, history)?.to_vec_u32()?[0])
    }

    /// The next token as a u32 tensor `[1]` on the logits' device, chosen there: no logits are
    /// read back. The repetition penalty is applied to the logits of `history`'s tokens, then
    /// greedy takes the argmax; otherwise the softmax of the logits over the temperature is cut
    /// to the `top_k` most likely tokens, then to the most likely whose probabilities (renormed)
    /// reach `top_p` (found by bisection on a probability threshold, so no sort), and one token
    /// is drawn from what is left with the seeded generator (walking the vocabulary in id
    /// order: the same distribution as any order). Ties at a cut are all kept. NaN logits make
    /// the draw undefined.
    pub fn pick(&mut self, logits: &Tensor, history: &[u32]) -> Result<Tensor> {
        let s = &self.settings;
        let vocab = logits.numel();
        let dev = logits.device().clone();
        let mut l = logits.reshape(&[vocab])?;
        if s.repetition_penalty != 1.0 {
            let mut seen: Vec<u32> = history
                .iter()
                .copied()
                .filter(|&t| (t as usize) < vocab)
                .collect();
            seen.sort_unstable();
            seen.dedup();
            if !seen.is_empty() {
                let ids = Tensor::from_vec_u32(&dev, seen.clone(), &[seen.len()])?;
                let g = l.index_select(0, &ids)?;
                let r = s.repetition_penalty;
                let zero = Tensor::full(&dev, &[], 0.0)?;
                let g =
                    Tensor::where_cond(&g.gt(&zero)?, &g.mul_scalar(1.0 / r)?, &g.mul_scalar(r)?)?;
                l.index_copy(0, &ids, &g)?;
            }
        }
        if self.is_greedy() {
            return Ok(l.argmax(0, true)?);
        }
        let p = l.mul_scalar(1.0 / s.temperature)?.softmax(0)?;
        let zero = Tensor::full(&dev, &[], 0.0)?;
        let mut q = p.clone();
        if s.top_k > 0 && s.top_k < vocab {
            let (top, _) = p.topk(s.top_k, 0, true)?;
            let least = top.narrow(0, s.top_k - 1, 1)?;
            q = Tensor::where_cond(&p.ge(&least)?, &p, &zero)?;
        }
        if s.top_p < 1.0 {
            q = Self::top_p(&q, s.top_p)?;
        }
        let cdf = q.cumsum(0, false, false)?;
        let total = cdf.narrow(0, vocab - 1, 1)?;
        let u = Tensor::from_vec(&dev, vec![self.uniform() as f32], &[1])?;
        // The first token whose running sum passes u·total (argmax takes the first maximum).
        Ok(cdf.gt(&total.mul(&u)?)?.argmax(0, true)?)
    }

    /// `q` (probabilities, some zeroed) with only its most likely values whose sum reaches
    /// `top_p` of the whole kept: a threshold between `lo` (keeps enough) and `hi` (keeps too
    /// little), halved 32 times on the device.
    fn top_p(q: &Tensor, top_p: f32) -> Result<Tensor> {
        let dev = q.device();
        let zero = Tensor::full(dev, &[], 0.0)?;
        let target = q.sum_all()?.mul_scalar(top_p)?;
        let mut lo = Tensor::full(dev, &[], 0.0)?;
        let mut hi = q
            .max(0, false)?
            .mul_scalar(2.0)?
            .add_scalar(f32::MIN_POSITIVE)?;
        for _ in 0..32 {
            let mid = lo.add(&hi)?.mul_scalar(0.5)?;
            let mass = Tensor::where_cond(&q.ge(&mid)?, q, &zero)?.sum_all()?;
            let enough = mass.ge(&target)?;
            lo = Tensor::where_cond(&enough, &mid, &lo)?;
            hi = Tensor::where_cond(&enough, &hi, &mid)?;
        }
        Ok(Tensor::where_cond(&q.ge(&lo)?, q, &zero)?)
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
