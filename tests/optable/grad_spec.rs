//! The gradient spec each op-table entry carries: which inputs `tests/grad.rs` differentiates,
//! on which samples (against central finite differences of the entry's f64 reference), or why
//! the op has no gradient.

use super::*;

/// How an op of the table is checked.
pub enum Grad {
    /// Differentiable in these inputs, on these samples (`None`: the table's own samples that
    /// are small and moderate enough for finite differences).
    Check {
        wrt: &'static [usize],
        samples: Option<Vec<Sample>>,
    },
    /// Not differentiable, and why.
    NoGrad(&'static str),
}

pub const ONE: &[usize] = &[0];
pub const TWO: &[usize] = &[0, 1];
pub const THREE: &[usize] = &[0, 1, 2];

/// Shapes for elementwise gradient samples: a matrix, an odd vector, a scalar, an empty one.
const SHAPES: &[&[usize]] = &[&[2, 3, 5], &[7], &[], &[0, 3]];

/// Random values in `lo..hi`, moved at least `gap` away from every point of `kinks`.
fn values(rng: &mut Lcg, n: usize, lo: f32, hi: f32, kinks: &[f32], gap: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            loop {
                let v = rng.uniform(lo, hi);
                if kinks.iter().all(|k| (v - k).abs() >= gap) {
                    break v;
                }
            }
        })
        .collect()
}

impl Grad {
    /// Differentiable in `wrt`, on the table's own samples.
    pub fn wrt(wrt: &'static [usize]) -> Grad {
        Grad::Check { wrt, samples: None }
    }

    /// The same samples regenerated with a wider distance from the kinks.
    pub fn with_gap(self, gap: f32) -> Grad {
        let Grad::Check {
            wrt,
            samples: Some(samples),
        } = self
        else {
            return self;
        };
        let mut rng = Lcg(17);
        let samples = samples
            .into_iter()
            .map(|s| Sample {
                inputs: s
                    .inputs
                    .into_iter()
                    .map(|(shape, v)| {
                        let n = v.len();
                        (shape, values(&mut rng, n, -3.0, 3.0, &[0.0], gap))
                    })
                    .collect(),
            })
            .collect();
        Grad::Check {
            wrt,
            samples: Some(samples),
        }
    }
}

/// Differentiable in its one input, on the table's own samples.
pub fn own() -> Grad {
    Grad::wrt(ONE)
}

/// A unary op on values in `lo..hi`, away from its `kinks`.
pub fn un(lo: f32, hi: f32, kinks: &[f32]) -> Grad {
    let mut rng = Lcg(7);
    let samples = SHAPES
        .iter()
        .map(|s| Sample {
            inputs: vec![(
                s.to_vec(),
                values(&mut rng, s.iter().product(), lo, hi, kinks, 0.05),
            )],
        })
        .collect();
    Grad::Check {
        wrt: ONE,
        samples: Some(samples),
    }
}

/// A binary op on broadcasting pairs; `b` stays away from zero (division) and `a` lies in
/// `a_lo..a_hi` (positive for `pow`).
pub fn binary_grad(a_lo: f32, a_hi: f32) -> Grad {
    let mut rng = Lcg(8);
    let pairs: &[(&[usize], &[usize])] = &[
        (&[3, 4], &[3, 4]),
        (&[3, 4], &[4]),
        (&[4], &[3, 4]),
        (&[2, 1, 5], &[3, 1]),
        (&[], &[2, 3]),
        (&[0, 3], &[3]),
    ];
    let samples = pairs
        .iter()
        .map(|(a, b)| {
            let na = a.iter().product();
            let nb: usize = b.iter().product();
            let bv = values(&mut rng, nb, -2.0, 2.0, &[0.0], 0.5);
            Sample {
                inputs: vec![(a.to_vec(), rng.vec(na, a_lo, a_hi)), (b.to_vec(), bv)],
            }
        })
        .collect();
    Grad::Check {
        wrt: TWO,
        samples: Some(samples),
    }
}

/// Small matmul operands (finite differences cost inputs × a reference product each), stored
/// already transposed where the op transposes (as the table's `matmul_t_samples`).
pub fn matmul_grad(ta: bool, tb: bool) -> Grad {
    let cases: &[(&[usize], &[usize])] = &[
        (&[5, 7], &[7, 3]),
        (&[1, 9], &[9, 1]),
        (&[2, 3, 4, 5], &[5, 2]),
        (&[2, 1, 3, 4], &[3, 4, 2]),
        (&[4, 0], &[0, 3]),
    ];
    Grad::Check {
        wrt: TWO,
        samples: Some(transposed_pairs(cases, ta, tb, 9)),
    }
}
