//! The digits data set (`examples/data/digits.csv.gz`, credited in the README) and a text
//! corpus for the character-level transformer.

use flate2::read::GzDecoder;
use std::io::Read;

/// The 1,797 8×8 digit images of UCI's "Optical Recognition of Handwritten Digits" (Alpaydin &
/// Kaynak, 1998; CC BY 4.0), as scikit-learn ships them.
const DIGITS_GZ: &[u8] = include_bytes!("../data/digits.csv.gz");

/// Labelled examples: `x` is `n` rows of `features` values, `y` the class of each row.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub x: Vec<f32>,
    pub y: Vec<u32>,
    pub features: usize,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.y.len()
    }

    /// The rows at `idx`, in that order.
    pub fn subset(&self, idx: &[usize]) -> Dataset {
        let f = self.features;
        Dataset {
            x: idx
                .iter()
                .flat_map(|&i| self.x[i * f..(i + 1) * f].iter().copied())
                .collect(),
            y: idx.iter().map(|&i| self.y[i]).collect(),
            features: f,
        }
    }
}

/// All digits, pixels scaled from 0..16 to 0..1.
pub fn digits() -> Dataset {
    let mut text = String::new();
    GzDecoder::new(DIGITS_GZ)
        .read_to_string(&mut text)
        .expect("the embedded digits file is valid gzip");
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Vec<f32> = line
            .split(',')
            .map(|s| s.trim().parse().expect("a number"))
            .collect();
        assert_eq!(v.len(), 65, "64 pixels and a label per line");
        x.extend(v[..64].iter().map(|p| p / 16.0));
        y.push(v[64] as u32);
    }
    Dataset { x, y, features: 64 }
}

/// A deterministic shuffle (SplitMix64-driven Fisher–Yates).
pub fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut rng = Rng(seed);
    let mut idx: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        idx.swap(i, rng.below(i as u64 + 1) as usize);
    }
    idx
}

/// (train, test): a seeded shuffle, then the last `test_fraction` held out.
pub fn split(data: &Dataset, test_fraction: f64, seed: u64) -> (Dataset, Dataset) {
    let idx = shuffled(data.len(), seed);
    let n_test = (data.len() as f64 * test_fraction).round() as usize;
    let (train, test) = idx.split_at(data.len() - n_test);
    (data.subset(train), data.subset(test))
}

/// SplitMix64: small, seeded, the same everywhere.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The transformer's training text: original lines written for this project (public domain),
/// repetitive enough for a small model to learn in seconds.
pub const TEXT: &str = include_str!("../data/kiln.txt");
