//! The op table's attention: q, k and v as three tensors or one packed tensor, causal or not,
//! and over a cache's first `lens[b]` keys.

use super::*;
use kiln::{AttentionOptions, Device, Error, Tensor};

const CAUSAL: AttentionOptions = AttentionOptions {
    causal: true,
    scale: None,
};

/// The attention entries of the op table.
pub fn table() -> Vec<OpInfo> {
    vec![
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "attention",
            grad: || Grad::wrt(THREE),
            samples: attention_samples,
            run: |t| t[0].attention(&t[1], &t[2], AttentionOptions::default()),
            reference: |r| attention_ref(&r[0], &r[1], &r[2], false, None),
            tol: |_| (2e-5, 2e-5),
            errors: attention_errors,
        },
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "attention(causal, scale 0.3)",
            grad: || Grad::wrt(THREE),
            samples: attention_samples,
            run: |t| {
                t[0].attention(
                    &t[1],
                    &t[2],
                    AttentionOptions {
                        causal: true,
                        scale: Some(0.3),
                    },
                )
            },
            reference: |r| attention_ref(&r[0], &r[1], &r[2], true, Some(0.3)),
            tol: |_| (2e-5, 2e-5),
            errors: no_errors,
        },
        OpInfo {
            index_inputs: &[3],
            packed_inputs: &[],
            name: "attention_cached(causal)",
            grad: || Grad::NoGrad("inference only"),
            samples: cached_samples,
            run: |t| t[0].attention_cached(&t[1], &t[2], &t[3], CAUSAL),
            reference: |r| cached_ref(r, true),
            tol: |_| (2e-5, 2e-5),
            errors: cached_errors,
        },
        OpInfo {
            index_inputs: &[3],
            packed_inputs: &[],
            name: "attention_cached",
            grad: || Grad::NoGrad("inference only"),
            samples: cached_samples,
            run: |t| t[0].attention_cached(&t[1], &t[2], &t[3], AttentionOptions::default()),
            reference: |r| cached_ref(r, false),
            tol: |_| (2e-5, 2e-5),
            errors: no_errors,
        },
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "attention(many keys)",
            grad: || Grad::NoGrad("the entries above check the backward"),
            samples: many_key_samples,
            run: |t| t[0].attention(&t[1], &t[2], CAUSAL),
            reference: |r| attention_ref(&r[0], &r[1], &r[2], true, None),
            tol: |_| (2e-5, 2e-5),
            errors: no_errors,
        },
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "attention_packed(causal)",
            grad: || Grad::wrt(ONE),
            samples: packed_samples,
            run: |t| t[0].attention_packed(CAUSAL),
            reference: |r| packed_ref(&r[0], true),
            tol: |_| (2e-5, 2e-5),
            errors: packed_errors,
        },
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "attention_packed",
            grad: || Grad::wrt(ONE),
            samples: packed_samples,
            run: |t| t[0].attention_packed(AttentionOptions::default()),
            reference: |r| packed_ref(&r[0], false),
            tol: |_| (2e-5, 2e-5),
            errors: no_errors,
        },
    ]
}

/// q, k, v with tq ≠ tk and d ≠ dv, tq past tk (causal queries that see every key), one head
/// dimension past the kernel's 128 (the composed form), a NaN, and empty ones.
pub fn attention_samples() -> Vec<Sample> {
    let mut rng = Lcg(150);
    let shapes: &[[&[usize]; 3]] = &[
        [&[2, 3, 2, 4], &[2, 5, 2, 4], &[2, 5, 2, 3]],
        [&[1, 5, 3, 2], &[1, 3, 3, 2], &[1, 3, 3, 5]],
        [&[1, 4, 1, 16], &[1, 4, 1, 16], &[1, 4, 1, 16]],
        [&[1, 2, 1, 130], &[1, 2, 1, 130], &[1, 2, 1, 2]],
        [&[0, 3, 2, 4], &[0, 3, 2, 4], &[0, 3, 2, 4]],
        [&[1, 0, 2, 4], &[1, 0, 2, 4], &[1, 0, 2, 4]],
    ];
    let mut out: Vec<Sample> = shapes
        .iter()
        .map(|s| Sample {
            inputs: s
                .iter()
                .map(|d| (d.to_vec(), rng.vec(d.iter().product(), -1.5, 1.5)))
                .collect(),
        })
        .collect();
    // A NaN in one query: its rows are NaN, the others are not.
    let mut q = rng.vec(2 * 3 * 2 * 4, -1.5, 1.5);
    q[9] = f32::NAN;
    out.push(Sample {
        inputs: vec![
            (vec![2, 3, 2, 4], q),
            (vec![2, 3, 2, 4], rng.vec(48, -1.5, 1.5)),
            (vec![2, 3, 2, 4], rng.vec(48, -1.5, 1.5)),
        ],
    });
    out
}

/// Rows of more keys than a chunk of a split forward (64): a row of 150 keys, queries past the
/// keys, a NaN key in the second chunk (rows that see it are NaN, the others not), and a large
/// score in a late chunk (the chunks' maxima differ by far).
pub fn many_key_samples() -> Vec<Sample> {
    let mut rng = Lcg(152);
    let mut shaped = |q: [usize; 4], k: [usize; 4]| -> Sample {
        let v = [k[0], k[1], k[2], k[3]];
        Sample {
            inputs: [q, k, v]
                .iter()
                .map(|d| (d.to_vec(), rng.vec(d.iter().product(), -1.5, 1.5)))
                .collect(),
        }
    };
    let mut out = vec![
        shaped([1, 150, 2, 16], [1, 150, 2, 16]),
        shaped([1, 160, 1, 4], [1, 140, 1, 4]),
    ];
    let mut nan = shaped([1, 130, 1, 8], [1, 130, 1, 8]);
    nan.inputs[1].1[70 * 8 + 3] = f32::NAN;
    out.push(nan);
    let mut big = shaped([1, 3, 1, 8], [1, 190, 1, 8]);
    for x in 0..8 {
        big.inputs[1].1[180 * 8 + x] = 9.0 * big.inputs[0].1[2 * 8 + x].signum();
    }
    // Query 2 sees only keys 0..=2 (causal from the top left), so keep the large key visible
    // to nobody but show the long rows with a second, non-causal look in the cached entries.
    out.push(big);
    // A prompt's rows (32 or more) at the CPU's fixed head widths, 64 and 128 (its keys
    // transposed first): a last block of keys short of 64, more keys than queries, and a NaN
    // key in a short block.
    out.push(shaped([1, 100, 2, 64], [1, 100, 2, 64]));
    out.push(shaped([1, 40, 1, 128], [1, 150, 1, 128]));
    let mut nan = shaped([1, 70, 1, 64], [1, 70, 1, 64]);
    nan.inputs[1].1[66 * 64 + 5] = f32::NAN;
    out.push(nan);
    out
}

/// q, k, v and lens `[batch]`: a decode step (one query) and a chunk of queries after tokens
/// already cached, lengths short of the capacity, at it, and past the queries' count; a chunk
/// longer than its keys (its first queries see none); a head dimension past the kernel's 128.
pub fn cached_samples() -> Vec<Sample> {
    let mut rng = Lcg(151);
    let cases: &[([&[usize]; 3], &[f32])] = &[
        (
            [&[3, 1, 4, 8], &[3, 9, 2 * 2, 8], &[3, 9, 4, 8]],
            &[1.0, 5.0, 9.0],
        ),
        ([&[2, 3, 2, 4], &[2, 7, 2, 4], &[2, 7, 2, 3]], &[3.0, 6.0]),
        ([&[1, 4, 1, 16], &[1, 70, 1, 16], &[1, 70, 1, 16]], &[66.0]),
        ([&[2, 3, 1, 4], &[2, 5, 1, 4], &[2, 5, 1, 4]], &[2.0, 0.0]),
        ([&[1, 2, 1, 130], &[1, 4, 1, 130], &[1, 4, 1, 2]], &[3.0]),
        // Longer than a chunk of a split forward (64 keys): a decode step over 257 of 300
        // cached keys, and a chunk of queries whose first sees fewer keys than a chunk holds.
        (
            [&[1, 1, 3, 64], &[1, 300, 3, 64], &[1, 300, 3, 64]],
            &[257.0],
        ),
        (
            [&[2, 5, 2, 8], &[2, 200, 2, 8], &[2, 200, 2, 8]],
            &[200.0, 131.0],
        ),
        // A prompt's chunk after cached tokens at the CPU's fixed head width (keys transposed
        // first), the cache longer than the length.
        (
            [&[1, 40, 2, 64], &[1, 100, 2, 64], &[1, 100, 2, 64]],
            &[90.0],
        ),
    ];
    let mut out: Vec<Sample> = cases
        .iter()
        .map(|(shapes, lens)| {
            let mut inputs: Vec<(Vec<usize>, Vec<f32>)> = shapes
                .iter()
                .map(|d| (d.to_vec(), rng.vec(d.iter().product(), -1.5, 1.5)))
                .collect();
            inputs.push((vec![lens.len()], lens.to_vec()));
            Sample { inputs }
        })
        .collect();
    // A decode step over 590 of 600 keys, whose first 400 score -inf for head 0's rows (a
    // -inf in dimension 0 against a positive query): a CPU forward that splits the keys
    // between threads sees a span of -inf scores only, which must weigh nothing once merged.
    let mut long = Sample {
        inputs: [[1, 2, 2, 8], [1, 600, 2, 8], [1, 600, 2, 8]]
            .iter()
            .map(|d| (d.to_vec(), rng.vec(d.iter().product(), -1.5, 1.5)))
            .collect(),
    };
    for i in 0..2 {
        long.inputs[0].1[i * 16] = 1.0;
    }
    for j in 0..400 {
        let key = &mut long.inputs[1].1[j * 16..j * 16 + 8];
        key.fill(0.0);
        key[0] = f32::NEG_INFINITY;
    }
    long.inputs.push((vec![1], vec![590.0]));
    out.push(long);
    out
}

/// attention_cached's reference: batch `b` sees keys `j < lens[b] (+ i + 1 − tq when causal)`.
pub fn cached_ref(r: &[Ref], causal: bool) -> Ref {
    let (tq, tk) = (r[0].shape[1], r[1].shape[1]);
    let lens = &r[3].data;
    let keys = |b: usize, i: usize| {
        let len = (lens[b] as usize).min(tk);
        match causal {
            true => (len + i + 1).saturating_sub(tq).min(len),
            false => len,
        }
    };
    attention_ref_keys(&r[0], &r[1], &r[2], None, keys)
}

fn cached_errors(d: &Device) -> Vec<ErrorCase> {
    let t = |s: &[usize]| Tensor::zeros(d, s).unwrap();
    let (q, k) = (t(&[2, 1, 2, 4]), t(&[2, 3, 2, 4]));
    let lens = |v: Vec<u32>| Tensor::from_vec_u32(d, v, &[2]).unwrap();
    let tracked = t(&[2, 1, 2, 4]).with_grad().unwrap();
    vec![
        (
            "a length past the keys",
            q.attention_cached(&k, &k, &lens(vec![3, 4]), CAUSAL),
            |e| {
                *e == Error::IndexOutOfRange {
                    op: "attention_cached",
                    index: 4,
                    size: 4,
                }
            },
        ),
        (
            "one length for two sequences",
            q.attention_cached(
                &k,
                &k,
                &Tensor::from_vec_u32(d, vec![1], &[1]).unwrap(),
                CAUSAL,
            ),
            |e| {
                matches!(
                    e,
                    Error::ShapeMismatch {
                        op: "attention_cached",
                        ..
                    }
                )
            },
        ),
        (
            "f32 lengths",
            q.attention_cached(&k, &k, &t(&[2]), CAUSAL),
            |e| {
                matches!(
                    e,
                    Error::DTypeMismatch {
                        op: "attention_cached",
                        ..
                    }
                )
            },
        ),
        (
            "k with other heads",
            q.attention_cached(&t(&[2, 3, 1, 4]), &k, &lens(vec![1, 1]), CAUSAL),
            |e| {
                matches!(
                    e,
                    Error::ShapeMismatch {
                        op: "attention_cached",
                        ..
                    }
                )
            },
        ),
        (
            "a query that requires gradients",
            tracked.attention_cached(&k, &k, &lens(vec![1, 1]), CAUSAL),
            |e| {
                matches!(
                    e,
                    Error::Unsupported {
                        op: "attention_cached",
                        ..
                    }
                )
            },
        ),
    ]
}

pub fn packed_samples() -> Vec<Sample> {
    shaped(&[&[2, 5, 3, 2, 4], &[1, 3, 3, 1, 8], &[0, 2, 3, 2, 4]], 151)
}

/// The f64 reference: `[b, tq, h, dv]`.
pub fn attention_ref(q: &Ref, k: &Ref, v: &Ref, causal: bool, scale: Option<f64>) -> Ref {
    let tk = k.shape[1];
    let keys = |_: usize, i: usize| if causal { (i + 1).min(tk) } else { tk };
    attention_ref_keys(q, k, v, scale, keys)
}

/// q of batch element `bb`, row `i` over its first `keys(bb, i)` keys (none: zeros).
fn attention_ref_keys(
    q: &Ref,
    k: &Ref,
    v: &Ref,
    scale: Option<f64>,
    keys: impl Fn(usize, usize) -> usize,
) -> Ref {
    let [b, tq, h, d] = q.shape[..] else { panic!() };
    let (tk, dv) = (k.shape[1], v.shape[3]);
    let scale = scale.unwrap_or(1.0 / (d.max(1) as f64).sqrt());
    let mut out = vec![0.0; b * tq * h * dv];
    for bb in 0..b {
        for i in 0..tq {
            for hh in 0..h {
                let n = keys(bb, i);
                if n == 0 {
                    continue;
                }
                let s: Vec<f64> = (0..n)
                    .map(|j| {
                        (0..d)
                            .map(|x| {
                                q.data[((bb * tq + i) * h + hh) * d + x]
                                    * k.data[((bb * tk + j) * h + hh) * d + x]
                            })
                            .sum::<f64>()
                            * scale
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let m = if s.iter().any(|x| x.is_nan()) {
                    f64::NAN
                } else {
                    m
                };
                let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                let total: f64 = e.iter().sum();
                for x in 0..dv {
                    out[((bb * tq + i) * h + hh) * dv + x] = (0..n)
                        .map(|j| e[j] / total * v.data[((bb * tk + j) * h + hh) * dv + x])
                        .sum();
                }
            }
        }
    }
    Ref {
        shape: vec![b, tq, h, dv],
        data: out,
    }
}

/// The packed input's parts as three references.
pub fn packed_ref(qkv: &Ref, causal: bool) -> Ref {
    let [b, t, _, h, d] = qkv.shape[..] else {
        panic!()
    };
    let part = |p: usize| Ref {
        shape: vec![b, t, h, d],
        data: (0..b * t)
            .flat_map(|row| {
                let at = row * 3 * h * d + p * h * d;
                qkv.data[at..at + h * d].to_vec()
            })
            .collect(),
    };
    attention_ref(&part(0), &part(1), &part(2), causal, None)
}

fn attention_errors(d: &Device) -> Vec<ErrorCase> {
    let t = |s: &[usize]| Tensor::zeros(d, s).unwrap();
    let (q, k) = (t(&[1, 2, 2, 4]), t(&[1, 3, 2, 4]));
    let u = Tensor::from_vec_u32(d, vec![0; 16], &[1, 2, 2, 4]).unwrap();
    vec![
        (
            "q of rank 3",
            t(&[2, 2, 4]).attention(&k, &k, AttentionOptions::default()),
            |e| {
                matches!(
                    e,
                    Error::InvalidShape {
                        op: "attention",
                        ..
                    }
                )
            },
        ),
        (
            "k with other heads",
            q.attention(
                &t(&[1, 3, 1, 4]),
                &t(&[1, 3, 1, 4]),
                AttentionOptions::default(),
            ),
            |e| {
                matches!(
                    e,
                    Error::ShapeMismatch {
                        op: "attention",
                        ..
                    }
                )
            },
        ),
        (
            "v with other keys",
            q.attention(&k, &t(&[1, 2, 2, 4]), AttentionOptions::default()),
            |e| {
                matches!(
                    e,
                    Error::ShapeMismatch {
                        op: "attention",
                        ..
                    }
                )
            },
        ),
        (
            "queries with no keys",
            q.attention(
                &t(&[1, 0, 2, 4]),
                &t(&[1, 0, 2, 4]),
                AttentionOptions::default(),
            ),
            |e| {
                matches!(
                    e,
                    Error::InvalidShape {
                        op: "attention",
                        ..
                    }
                )
            },
        ),
        (
            "a NaN scale",
            q.attention(
                &k,
                &k,
                AttentionOptions {
                    causal: false,
                    scale: Some(f32::NAN),
                },
            ),
            |e| {
                matches!(
                    e,
                    Error::InvalidArgument {
                        op: "attention",
                        ..
                    }
                )
            },
        ),
        (
            "u32 queries",
            u.attention(&k, &k, AttentionOptions::default()),
            |e| {
                matches!(
                    e,
                    Error::DTypeMismatch {
                        op: "attention",
                        ..
                    }
                )
            },
        ),
    ]
}

fn packed_errors(d: &Device) -> Vec<ErrorCase> {
    vec![(
        "a packed input with 2 parts",
        Tensor::zeros(d, &[1, 2, 2, 2, 4])
            .unwrap()
            .attention_packed(CAUSAL),
        |e| {
            matches!(
                e,
                Error::InvalidShape {
                    op: "attention_packed",
                    ..
                }
            )
        },
    )]
}
