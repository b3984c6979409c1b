//! The GGUF reader, the model loader's errors and the sampler, without any fixture: a GGUF file
//! is written here byte by byte (the format's own writer is exercised by tests/llama_cpp.rs).

use kiln::{DType, Device, Tensor};
use kiln_llm::{Error, Gguf, Model, Sampler, Sampling};

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

enum V<'a> {
    U32(u32),
    F32(f32),
    Str(&'a str),
}

/// A GGUF v3 file with these metadata and f32 tensors (`shape` row-major).
fn gguf(kv: &[(&str, V)], tensors: &[(&str, &[usize], Vec<f32>)]) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((kv.len() as u64).to_le_bytes());
    for (k, v) in kv {
        string(&mut out, k);
        match v {
            V::U32(x) => {
                out.extend(4u32.to_le_bytes());
                out.extend(x.to_le_bytes());
            }
            V::F32(x) => {
                out.extend(6u32.to_le_bytes());
                out.extend(x.to_le_bytes());
            }
            V::Str(s) => {
                out.extend(8u32.to_le_bytes());
                string(&mut out, s);
            }
        }
    }
    let mut offset = 0u64;
    for (name, shape, data) in tensors {
        string(&mut out, name);
        out.extend((shape.len() as u32).to_le_bytes());
        for d in shape.iter().rev() {
            out.extend((*d as u64).to_le_bytes());
        }
        out.extend(0u32.to_le_bytes());
        out.extend(offset.to_le_bytes());
        offset += (data.len() * 4).div_ceil(32) as u64 * 32;
    }
    while !out.len().is_multiple_of(32) {
        out.push(0);
    }
    for (_, _, data) in tensors {
        let start = out.len();
        out.extend(data.iter().flat_map(|v| v.to_le_bytes()));
        out.resize(start + (data.len() * 4).div_ceil(32) * 32, 0);
    }
    out
}

fn tiny_llama(skip: Option<&str>, arch: &str) -> Vec<u8> {
    let (dim, ffn, vocab) = (8usize, 16usize, 5usize);
    let w = |n: usize| {
        (0..n)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) / 10.0)
            .collect::<Vec<f32>>()
    };
    let names: Vec<(String, Vec<usize>)> = vec![
        ("token_embd.weight".into(), vec![vocab, dim]),
        ("blk.0.attn_norm.weight".into(), vec![dim]),
        ("blk.0.attn_q.weight".into(), vec![dim, dim]),
        ("blk.0.attn_k.weight".into(), vec![dim / 2, dim]),
        ("blk.0.attn_v.weight".into(), vec![dim / 2, dim]),
        ("blk.0.attn_output.weight".into(), vec![dim, dim]),
        ("blk.0.ffn_norm.weight".into(), vec![dim]),
        ("blk.0.ffn_gate.weight".into(), vec![ffn, dim]),
        ("blk.0.ffn_up.weight".into(), vec![ffn, dim]),
        ("blk.0.ffn_down.weight".into(), vec![dim, ffn]),
        ("output_norm.weight".into(), vec![dim]),
    ];
    let tensors: Vec<(&str, &[usize], Vec<f32>)> = names
        .iter()
        .filter(|(n, _)| Some(n.as_str()) != skip)
        .map(|(n, s)| (n.as_str(), s.as_slice(), w(s.iter().product())))
        .collect();
    let key = |k: &str| format!("{arch}.{k}");
    let keys = [
        key("context_length"),
        key("embedding_length"),
        key("block_count"),
        key("feed_forward_length"),
        key("attention.head_count"),
        key("attention.head_count_kv"),
        key("attention.layer_norm_rms_epsilon"),
    ];
    gguf(
        &[
            ("general.architecture", V::Str(arch)),
            (&keys[0], V::U32(32)),
            (&keys[1], V::U32(dim as u32)),
            (&keys[2], V::U32(1)),
            (&keys[3], V::U32(ffn as u32)),
            (&keys[4], V::U32(2)),
            (&keys[5], V::U32(1)),
            (&keys[6], V::F32(1e-5)),
        ],
        &tensors,
    )
}

#[test]
fn a_written_file_reads_back() {
    let bytes = tiny_llama(None, "llama");
    let g = Gguf::from_bytes(bytes).unwrap();
    assert_eq!(g.version, 3);
    assert_eq!(g.str("general.architecture").unwrap(), "llama");
    assert_eq!(g.u64("llama.block_count").unwrap(), 1);
    let info = g.info("blk.0.attn_k.weight").unwrap();
    assert_eq!(info.shape, vec![4, 8]);
    assert_eq!(info.dtype(), Some(DType::F32));
    let t = g.tensor("blk.0.attn_k.weight", &Device::cpu()).unwrap();
    assert_eq!(t.shape(), &[4, 8]);
    assert_eq!(t.to_vec().unwrap()[1], ((37 % 11) as f32 - 5.0) / 10.0);
    // Tied embeddings (no output.weight): the model runs and gives [1, vocab] logits.
    let model = Model::from_gguf(&g, &Device::cpu()).unwrap();
    let mut cache = model.cache(8);
    let l = model
        .forward(&[1, 2, 3], &mut cache, kiln_llm::Logits::Last)
        .unwrap();
    assert_eq!(l.shape(), &[1, 5]);
    assert!(l.to_vec().unwrap().iter().all(|v| v.is_finite()));
    assert_eq!(cache.len(), 3);
}

#[test]
fn every_truncation_and_byte_flip_is_a_typed_error_or_a_file() {
    let bytes = tiny_llama(None, "llama");
    let data_start = {
        let g = Gguf::from_bytes(bytes.clone()).unwrap();
        g.tensors.iter().map(|t| t.offset).min().unwrap()
    };
    for len in 0..bytes.len() {
        match Gguf::from_bytes(bytes[..len].to_vec()) {
            Err(Error::Format { at, .. }) => assert!(at <= len as u64),
            other => panic!("truncated to {len}: {other:?}"),
        }
    }
    // Every header byte replaced by a few hostile values: never a panic, and a file that still
    // parses loads or refuses its model with a typed error.
    for i in 0..data_start {
        for v in [0u8, 0xff, 0x7f, bytes[i] ^ 1] {
            let mut b = bytes.clone();
            b[i] = v;
            if let Ok(g) = Gguf::from_bytes(b) {
                let _ = Model::from_gguf(&g, &Device::cpu());
            }
        }
    }
}

#[test]
fn loader_errors_name_what_is_wrong() {
    let g = Gguf::from_bytes(tiny_llama(Some("blk.0.ffn_up.weight"), "llama")).unwrap();
    match Model::from_gguf(&g, &Device::cpu()) {
        Err(Error::MissingTensor(n)) => assert_eq!(n, "blk.0.ffn_up.weight"),
        other => panic!("{:?}", other.err()),
    }
    let g = Gguf::from_bytes(tiny_llama(None, "mamba")).unwrap();
    assert!(matches!(
        Model::from_gguf(&g, &Device::cpu()),
        Err(Error::UnknownArchitecture(a)) if a == "mamba"
    ));
    assert!(matches!(
        Gguf::from_bytes(b"GGML\x03\0\0\0".to_vec()),
        Err(Error::Format { at: 0, .. })
    ));
    let mut v1 = tiny_llama(None, "llama");
    v1[4] = 1;
    assert!(matches!(Gguf::from_bytes(v1), Err(Error::Format { .. })));
    let g = Gguf::from_bytes(tiny_llama(None, "llama")).unwrap();
    let model = Model::from_gguf(&g, &Device::cpu()).unwrap();
    let mut cache = model.cache(4);
    let last = kiln_llm::Logits::Last;
    for bad in [&[][..], &[5], &[0, 1, 2, 3, 4]] {
        assert!(matches!(
            model.forward(bad, &mut cache, last),
            Err(Error::InvalidRequest(_))
        ));
    }
    assert_eq!(
        cache.len(),
        0,
        "a refused request leaves the cache as it was"
    );
}

#[test]
fn sampling_is_seeded_and_follows_the_settings() {
    let dev = Device::cpu();
    let logits = Tensor::from_vec(&dev, vec![0.0, 2.0, 1.0, -1.0, 1.9], &[1, 5]).unwrap();
    let greedy = Sampler::new(Sampling::default())
        .unwrap()
        .next(&logits, &[])
        .unwrap();
    assert_eq!(greedy, 1);
    let warm = |seed, top_k, top_p| Sampling {
        temperature: 1.0,
        top_k,
        top_p,
        seed,
        ..Sampling::default()
    };
    let draw = |s: Sampling, n: usize| {
        let mut sm = Sampler::new(s).unwrap();
        (0..n)
            .map(|_| sm.next(&logits, &[]).unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        draw(warm(7, 0, 1.0), 50),
        draw(warm(7, 0, 1.0), 50),
        "seeded"
    );
    assert_ne!(draw(warm(7, 0, 1.0), 50), draw(warm(8, 0, 1.0), 50));
    assert!(
        draw(warm(1, 1, 1.0), 20).iter().all(|&t| t == 1),
        "top-k 1 is greedy"
    );
    assert!(
        draw(warm(1, 0, 1.0), 400).contains(&3),
        "every token can come up"
    );
    assert!(draw(warm(1, 2, 1.0), 200).iter().all(|&t| t == 1 || t == 4));
    // softmax(2, 1.9, 1, 0, -1): tokens 1 and 4 hold 0.40 + 0.36; top-p 0.7 keeps just them.
    assert!(draw(warm(1, 0, 0.7), 200).iter().all(|&t| t == 1 || t == 4));
    let counts = draw(warm(3, 0, 1.0), 4000)
        .iter()
        .filter(|&&t| t == 1)
        .count();
    assert!(
        (1400..1800).contains(&counts),
        "p(token 1) ≈ 0.40: {counts} of 4000"
    );
    // A repetition penalty turns greedy away from a token already used.
    let penalized = Sampling {
        repetition_penalty: 2.0,
        ..Sampling::default()
    };
    assert_eq!(
        Sampler::new(penalized)
            .unwrap()
            .next(&logits, &[1])
            .unwrap(),
        4
    );
    for bad in [
        Sampling {
            temperature: -1.0,
            ..Sampling::default()
        },
        Sampling {
            top_p: 0.0,
            ..Sampling::default()
        },
        Sampling {
            repetition_penalty: f32::NAN,
            ..Sampling::default()
        },
    ] {
        assert!(matches!(Sampler::new(bad), Err(Error::InvalidRequest(_))));
    }
}

#[test]
fn chat_templates_are_recognised_or_refused_by_name() {
    use kiln_llm::{Message, Template};
    assert_eq!(Template::detect("chatml").unwrap(), Template::ChatMl);
    assert_eq!(
        Template::detect("{{ '<|start_header_id|>' }}{{ '<|end_header_id|>' }}").unwrap(),
        Template::Llama3
    );
    for unknown in ["{{ '<start_of_turn>' }}", "plain text", ""] {
        assert!(
            matches!(Template::detect(unknown), Err(Error::Tokenizer(_))),
            "{unknown:?}"
        );
    }
    // A conversation with an assistant turn: the Llama 2 family closes it with </s> and opens
    // the next turn with [INST].
    let t = Template::detect("llama2").unwrap();
    let chat = [
        Message::new("user", "a"),
        Message::new("assistant", "b"),
        Message::new("user", "c"),
    ];
    assert_eq!(
        t.apply(&chat, true),
        "[INST] a [/INST]b</s>[INST] c [/INST]"
    );
    assert_eq!(Template::ChatMl.end_of_turn(), Some("<|im_end|>"));
}

/// The generator `Sampler` draws from (SplitMix64 on the seed mixed as `Sampler::new` does).
struct SplitMix(u64);

impl SplitMix {
    fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The draw in f64 from the settings' definition: penalty, softmax over the temperature, the
/// `top_k` most likely, the shortest most-likely set reaching `top_p`, then the first token in
/// id order whose running sum passes `u` of what is left. Also how close `u` came to a boundary
/// (relative), below which f32 sums may pick the neighbour.
fn reference_draw(l: &[f32], s: &Sampling, history: &[u32], u: f64) -> (u32, f64) {
    let mut l: Vec<f64> = l.iter().map(|&x| f64::from(x)).collect();
    for &t in history {
        let x = &mut l[t as usize];
        let r = f64::from(s.repetition_penalty);
        *x = if *x > 0.0 { *x / r } else { *x * r };
    }
    let t = f64::from(s.temperature);
    let top = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = l.iter().map(|x| ((x - top) / t).exp()).collect();
    let sum: f64 = e.iter().sum();
    let mut p: Vec<f64> = e.iter().map(|x| x / sum).collect();
    let mut order: Vec<usize> = (0..p.len()).collect();
    order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
    if s.top_k > 0 {
        for &i in &order[s.top_k..] {
            p[i] = 0.0;
        }
    }
    let kept: f64 = p.iter().sum();
    let mut acc = 0.0;
    let mut cut = order.len();
    for (n, &i) in order.iter().enumerate() {
        acc += p[i];
        if acc >= f64::from(s.top_p) * kept {
            cut = n + 1;
            break;
        }
    }
    for &i in &order[cut..] {
        p[i] = 0.0;
    }
    let total: f64 = p.iter().sum();
    let mut run = 0.0;
    let mut near = f64::INFINITY;
    let mut pick = None;
    for (i, &x) in p.iter().enumerate() {
        run += x;
        near = near.min((run / total - u).abs());
        if pick.is_none() && run > u * total {
            pick = Some(i as u32);
        }
    }
    (pick.unwrap(), near)
}

/// Sampling runs on the logits' device: on the CPU and a GPU, every draw of several settings
/// matches the f64 definition for the same seed (except where the draw fell within f32 rounding
/// of a boundary), and the repetition penalty turns greedy away from a used token.
#[test]
fn sampling_on_every_device_matches_its_definition() {
    let mut devices = vec![Device::cpu()];
    match Device::gpu() {
        Ok(d) => devices.push(d),
        Err(e) if std::env::var("KILN_REQUIRE_GPU").is_ok_and(|v| v == "1") => {
            panic!("KILN_REQUIRE_GPU=1 but no GPU: {e}")
        }
        Err(e) => eprintln!("!!!!! kiln-llm: NO GPU ({e}) — GPU sampling SKIPPED !!!!!"),
    }
    let vocab = 500;
    let mut rng = SplitMix(11);
    let logits: Vec<f32> = (0..vocab)
        .map(|_| (rng.uniform() * 8.0 - 4.0) as f32)
        .collect();
    let history = [3u32, 17, 17, 250, 499];
    let settings = [
        (0.8, 0, 1.0, 1.0),
        (1.0, 20, 1.0, 1.3),
        (0.7, 0, 0.9, 1.0),
        (1.2, 50, 0.8, 1.1),
        (0.5, 1, 1.0, 1.0),
    ];
    for dev in &devices {
        let l = Tensor::from_slice(dev, &logits, &[1, vocab]).unwrap();
        let mut close = 0;
        for (n, &(temperature, top_k, top_p, repetition_penalty)) in settings.iter().enumerate() {
            let s = Sampling {
                temperature,
                top_k,
                top_p,
                repetition_penalty,
                seed: 40 + n as u64,
            };
            let mut sampler = Sampler::new(s.clone()).unwrap();
            let mut draws = SplitMix(s.seed ^ 0x9E37_79B9_7F4A_7C15);
            for draw in 0..60 {
                let got = sampler.next(&l, &history).unwrap();
                let (want, near) = reference_draw(&logits, &s, &history, draws.uniform());
                if near < 1e-5 {
                    close += 1;
                    continue;
                }
                assert_eq!(got, want, "{dev}: {s:?}, draw {draw}");
            }
        }
        assert!(close <= 3, "{dev}: {close} draws too close to call");
        let penalized = Sampling {
            repetition_penalty: 50.0,
            ..Sampling::default()
        };
        let best = reference_draw(
            &logits,
            &Sampling {
                temperature: 1e-3,
                ..Sampling::default()
            },
            &[],
            0.0,
        )
        .0;
        let next = Sampler::new(penalized).unwrap().next(&l, &[best]).unwrap();
        assert_ne!(next, best, "{dev}: the penalty turns greedy away");
    }
}
