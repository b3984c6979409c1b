//! The decoder: Llama-family blocks (RMSNorm, RoPE, grouped-query attention, SwiGLU) built from
//! kiln's ops, with weights kept in the file's storage types and a KV cache per sequence.

use kiln::{AttentionOptions, DType, Device, Graph, RopeLayout, Tensor, UnaryOp};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::config::{Arch, Config, RopeStyle};
use crate::error::{Error, Result};
use crate::gguf::Gguf;

/// `e` as the engine's error, for a step the engine runs (a captured one).
fn engine(e: Error) -> kiln::Error {
    match e {
        Error::Kiln(e) => e,
        other => kiln::Error::InvalidArgument {
            op: "decode step",
            reason: other.to_string(),
        },
    }
}

/// Attention over a cache's first keys with the queries last (decode and prefill alike).
const CAUSAL: AttentionOptions = AttentionOptions {
    causal: true,
    scale: None,
};

/// A block's q, k and v projections: three products, or one fused product (GPT-2's
/// `attn_qkv`, rows q then k then v) whose output is cut in three.
#[derive(Clone)]
enum Qkv {
    Separate(Box<SeparateQkv>),
    Fused { w: Tensor, b: Option<Tensor> },
}

#[derive(Clone)]
struct SeparateQkv {
    wq: Tensor,
    wk: Tensor,
    wv: Tensor,
    bq: Option<Tensor>,
    bk: Option<Tensor>,
    bv: Option<Tensor>,
}

/// A block's feed-forward up to its down projection.
#[derive(Clone)]
enum Ffn {
    /// GPT-2: GELU of one product (with its bias).
    Gelu { up: Tensor, b: Option<Tensor> },
    /// SwiGLU, `silu(x·gate) · (x·up)`, from one weight stacking gate's rows over up's: one
    /// product, as wide as both.
    Stacked(Tensor),
    /// SwiGLU with gate and up apart (their storage types differ, or up has a bias).
    Apart {
        gate: Tensor,
        up: Tensor,
        b: Option<Tensor>,
    },
}

#[derive(Clone)]
struct Block {
    attn_norm: Tensor,
    attn_norm_b: Option<Tensor>,
    qkv: Qkv,
    wo: Tensor,
    bo: Option<Tensor>,
    ffn_norm: Tensor,
    ffn_norm_b: Option<Tensor>,
    ffn: Ffn,
    down: Tensor,
    down_b: Option<Tensor>,
}

/// A language model on one device. Cloning it is cheap (the weights are shared).
#[derive(Clone)]
pub struct Model {
    /// Its hyperparameters.
    pub config: Config,
    device: Device,
    embed: Tensor,
    /// GPT-2's learned positions `[context, dim]`.
    positions: Option<Tensor>,
    blocks: Vec<Block>,
    norm: Tensor,
    norm_b: Option<Tensor>,
    output: Tensor,
    /// RoPE's inverse frequencies, one per rotated pair.
    inv_freq: Vec<f64>,
}

/// The keys and values of one sequence's past tokens, per layer: each layer's are one tensor
/// `[1, capacity, kv_heads, head_dim]`, allocated at the first step and written in place
/// (`Tensor::index_copy`), so a token costs no copy of the tokens before it.
///
/// On a GPU, the single-token steps are captured once (the second one) and replayed
/// (`Device::capture`): a token is then one submission, with its logits' readback.
pub struct Cache {
    kv: Arc<Mutex<Layers>>,
    len: usize,
    capacity: usize,
    /// The captured single-token step, once there is one.
    decode: Option<Graph<'static>>,
    /// Single-token steps run so far (the first runs eagerly, so kernels are tuned first).
    steps: usize,
    replay: bool,
}

/// A cache's tensors: per layer keys and values, and RoPE's tables for its positions.
#[derive(Default)]
struct Layers {
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    /// `cos` and `sin` `[capacity, rope_dim / 2]` (see [`Model::rope_tables`]).
    rope: Option<(Tensor, Tensor)>,
}

impl Cache {
    /// Tokens held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no token is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The most tokens it may hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets every token (a new conversation); the memory stays for the next one.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Whether single-token steps are captured and replayed on a GPU (on by default). Off,
    /// every step runs its ops again: for comparisons, and for a device where replays misbehave.
    pub fn set_replay(&mut self, on: bool) {
        self.replay = on;
        if !on {
            self.decode = None;
        }
    }

    /// The cache's tensors, locked (a step that failed while holding them left them whole: a
    /// write either happened or did not).
    fn layers(kv: &Mutex<Layers>) -> MutexGuard<'_, Layers> {
        kv.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A weight found by [`Model::build`]'s source: its shape, and a call that loads it.
pub(crate) type Weight<'a> = (Vec<usize>, Box<dyn FnOnce() -> Result<Tensor> + 'a>);

/// Where [`Model::build`] finds a weight by its GGUF name.
pub(crate) type WeightSource<'a> = dyn Fn(&str) -> Option<Weight<'a>> + 'a;

/// Where [`Model::build`] finds several weights stacked by rows into one tensor (their
/// products with one input then run as one): `None` where they cannot be (their storage
/// types or columns differ). The shapes are checked before.
pub(crate) type StackSource<'a> = dyn Fn(&[&str]) -> Result<Option<Tensor>> + 'a;

/// Which positions' logits [`Model::forward`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Only the last token's (what generation needs): `[1, vocab]`.
    Last,
    /// Every token's: `[tokens, vocab]`.
    All,
}

impl Model {
    /// Loads a GGUF model onto `device`: weights stay in the file's storage types (f16, q8_0,
    /// q4_0, q4_K, q6_K are decoded in registers by the products); norm weights become f32.
    /// Errors: [`Error::MissingTensor`], and [`Error::BadTensor`] for a tensor whose shape
    /// disagrees with the configuration or whose type kiln does not store.
    pub fn from_gguf(g: &Gguf, device: &Device) -> Result<Model> {
        let config = Config::from_gguf(g)?;
        let source = |name: &str| -> Option<Weight<'_>> {
            let info = g.info(name)?;
            let name = name.to_string();
            Some((
                info.shape.clone(),
                Box::new(move || g.tensor(&name, device)),
            ))
        };
        let stack = |names: &[&str]| g.stacked(names, device);
        Model::build(config, device, &source, &stack)
    }

    /// A model from its configuration and its weights under GGUF's names (`token_embd.weight`,
    /// `blk.N.attn_q.weight`, ...): `source` gives a weight's shape and a way to load it.
    pub(crate) fn build(
        config: Config,
        device: &Device,
        source: &WeightSource<'_>,
        stack: &StackSource<'_>,
    ) -> Result<Model> {
        let c = &config;
        let found = |name: &str, shape: &[usize]| -> Result<Weight<'_>> {
            let (have, get) = source(name).ok_or_else(|| Error::MissingTensor(name.into()))?;
            if have != shape {
                return Err(Error::BadTensor {
                    name: name.into(),
                    reason: format!("shape {have:?}, the configuration needs {shape:?}"),
                });
            }
            Ok((have, get))
        };
        let load = |name: &str, shape: &[usize]| -> Result<Tensor> { found(name, shape)?.1() };
        // Weights stacked by rows where the source can, each one's shape checked first. One
        // product instead of three (or two) saves a parallel region and a quantization of the
        // input each on the CPU, a dispatch on a GPU. Gate and up everywhere: their halves are
        // read in place by SwiGLU's one fused pass (`narrow` is a view). q, k and v on the CPU
        // only: RoPE reads them, so on a GPU each cut is a copy dispatch like the product it
        // saves (lavapipe: 636 -> 696 dispatches a token stacked).
        let stacked = |parts: &[(&str, &[usize])], cpu_only: bool| -> Result<Option<Tensor>> {
            if cpu_only && !device.is_cpu() {
                return Ok(None);
            }
            for (name, shape) in parts {
                let _shape_checked = found(name, shape)?.0;
            }
            stack(&parts.iter().map(|(n, _)| *n).collect::<Vec<_>>())
        };
        let present = |name: &str| source(name).is_some();
        let vector = |name: &str, n: usize| -> Result<Tensor> {
            let t = load(name, &[n])?;
            Ok(match t.dtype() {
                DType::F32 => t,
                _ => t.to_dtype(DType::F32)?,
            })
        };
        let (q_out, kv_out) = (c.heads * c.head_dim, c.kv_heads * c.head_dim);
        let mut blocks = Vec::with_capacity(c.layers);
        let gpt2 = c.arch == Arch::Gpt2;
        for i in 0..c.layers {
            let p = |n: &str| format!("blk.{i}.{n}");
            // Biases: all of GPT-2's, Qwen2's on q/k/v, and any a Llama file carries.
            let bias = |n: &str, len: usize| -> Result<Option<Tensor>> {
                match c.arch {
                    Arch::Gpt2 | Arch::Qwen2 => vector(&p(n), len).map(Some),
                    Arch::Llama if present(&p(n)) => vector(&p(n), len).map(Some),
                    Arch::Llama => Ok(None),
                }
            };
            let opt_bias = |n: &str, len: usize| -> Result<Option<Tensor>> {
                match gpt2 || present(&p(n)) {
                    true => vector(&p(n), len).map(Some),
                    false => Ok(None),
                }
            };
            let qkv = match gpt2 {
                true => Qkv::Fused {
                    w: load(&p("attn_qkv.weight"), &[q_out + 2 * kv_out, c.dim])?,
                    b: bias("attn_qkv.bias", q_out + 2 * kv_out)?,
                },
                false => {
                    let (wq, wk, wv) = (p("attn_q.weight"), p("attn_k.weight"), p("attn_v.weight"));
                    let (bq, bk, bv) = (
                        bias("attn_q.bias", q_out)?,
                        bias("attn_k.bias", kv_out)?,
                        bias("attn_v.bias", kv_out)?,
                    );
                    let biases = match (&bq, &bk, &bv) {
                        (None, None, None) => Some(None),
                        (Some(q), Some(k), Some(v)) => Some(Some(Tensor::cat(&[q, k, v], 0)?)),
                        _ => None,
                    };
                    let w = match biases {
                        Some(_) => stacked(
                            &[
                                (&wq, &[q_out, c.dim]),
                                (&wk, &[kv_out, c.dim]),
                                (&wv, &[kv_out, c.dim]),
                            ],
                            true,
                        )?,
                        None => None,
                    };
                    match (w, biases) {
                        (Some(w), Some(b)) => Qkv::Fused { w, b },
                        _ => Qkv::Separate(Box::new(SeparateQkv {
                            wq: load(&wq, &[q_out, c.dim])?,
                            wk: load(&wk, &[kv_out, c.dim])?,
                            wv: load(&wv, &[kv_out, c.dim])?,
                            bq,
                            bk,
                            bv,
                        })),
                    }
                }
            };
            let ffn = match gpt2 {
                true => Ffn::Gelu {
                    up: load(&p("ffn_up.weight"), &[c.ffn, c.dim])?,
                    b: opt_bias("ffn_up.bias", c.ffn)?,
                },
                false => {
                    let (gate, up) = (p("ffn_gate.weight"), p("ffn_up.weight"));
                    let shape: &[usize] = &[c.ffn, c.dim];
                    let b = opt_bias("ffn_up.bias", c.ffn)?;
                    let w = match b {
                        Some(_) => None,
                        None => stacked(&[(&gate, shape), (&up, shape)], false)?,
                    };
                    match w {
                        Some(w) => Ffn::Stacked(w),
                        None => Ffn::Apart {
                            gate: load(&gate, shape)?,
                            up: load(&up, shape)?,
                            b,
                        },
                    }
                }
            };
            blocks.push(Block {
                attn_norm: vector(&p("attn_norm.weight"), c.dim)?,
                attn_norm_b: opt_bias("attn_norm.bias", c.dim)?,
                qkv,
                wo: load(&p("attn_output.weight"), &[c.dim, q_out])?,
                bo: opt_bias("attn_output.bias", c.dim)?,
                ffn_norm: vector(&p("ffn_norm.weight"), c.dim)?,
                ffn_norm_b: opt_bias("ffn_norm.bias", c.dim)?,
                ffn,
                down: load(&p("ffn_down.weight"), &[c.dim, c.ffn])?,
                down_b: opt_bias("ffn_down.bias", c.dim)?,
            });
        }
        let positions = match gpt2 {
            true => {
                let rows = source("position_embd.weight")
                    .map(|(shape, _)| shape[0])
                    .ok_or_else(|| Error::MissingTensor("position_embd.weight".into()))?;
                if rows < c.context {
                    return Err(Error::BadTensor {
                        name: "position_embd.weight".into(),
                        reason: format!("{rows} positions for a context of {}", c.context),
                    });
                }
                Some(load("position_embd.weight", &[rows, c.dim])?)
            }
            false => None,
        };
        let norm_b = match gpt2 || present("output_norm.bias") {
            true => Some(vector("output_norm.bias", c.dim)?),
            false => None,
        };
        let embed = load("token_embd.weight", &[c.vocab, c.dim])?;
        let output = match present("output.weight") {
            true => load("output.weight", &[c.vocab, c.dim])?,
            false => embed.clone(), // tied embeddings
        };
        // llama.cpp's rope: theta_i = pos · base^(-2i/n_rot), divided by a frequency factor per
        // pair where the file has `rope_freqs.weight` (Llama 3's scaling).
        let factors = match present("rope_freqs.weight") {
            true => vector("rope_freqs.weight", c.rope_dim / 2)?.to_vec()?,
            false => vec![1.0; c.rope_dim / 2],
        };
        let inv_freq = (0..c.rope_dim / 2)
            .map(|i| {
                (c.rope_base as f64).powf(-2.0 * i as f64 / c.rope_dim as f64)
                    / f64::from(factors[i])
                    / f64::from(c.rope_scale)
            })
            .collect();
        log::info!(
            "{:?}: {} layers, width {}, {} heads ({} kv), vocab {}, on {}",
            c.arch,
            c.layers,
            c.dim,
            c.heads,
            c.kv_heads,
            c.vocab,
            device.info().name
        );
        Ok(Model {
            norm: vector("output_norm.weight", c.dim)?,
            config,
            device: device.clone(),
            embed,
            positions,
            norm_b,
            blocks,
            output,
            inv_freq,
        })
    }

    /// The device the model runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// An empty cache for one sequence of up to `capacity` tokens (at most the model's context
    /// length).
    pub fn cache(&self, capacity: usize) -> Cache {
        Cache {
            kv: Arc::new(Mutex::new(Layers::default())),
            len: 0,
            capacity: capacity.min(self.config.context),
            decode: None,
            steps: 0,
            replay: true,
        }
    }

    /// Allocates `cache`'s tensors on first use: zeros for the keys and values, and RoPE's
    /// tables for every position it can hold.
    fn allocate(&self, cache: &Cache) -> Result<()> {
        let c = &self.config;
        let mut kv = Cache::layers(&cache.kv);
        if kv.k.len() == c.layers {
            return Ok(());
        }
        let shape = [1, cache.capacity, c.kv_heads, c.head_dim];
        for _ in 0..c.layers {
            kv.k.push(Tensor::zeros(&self.device, &shape)?);
            kv.v.push(Tensor::zeros(&self.device, &shape)?);
        }
        if c.rope_dim > 0 {
            let positions: Vec<usize> = (0..cache.capacity).collect();
            kv.rope = Some(self.rope_tables(&positions)?);
        }
        Ok(())
    }

    /// Checks a request of `n` tokens (`tokens` among them) against a cache.
    fn check(&self, tokens: &[u32], n: usize, cache: &Cache) -> Result<()> {
        let c = &self.config;
        if n == 0 {
            return Err(Error::InvalidRequest("no tokens to run".into()));
        }
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= c.vocab) {
            return Err(Error::InvalidRequest(format!(
                "token {t} is outside the vocabulary of {}",
                c.vocab
            )));
        }
        if cache.len + n > cache.capacity {
            return Err(Error::InvalidRequest(format!(
                "{n} tokens after {} do not fit a cache of {}",
                cache.len, cache.capacity
            )));
        }
        let layers = Cache::layers(&cache.kv).k.len();
        if layers != 0 && layers != c.layers {
            return Err(Error::InvalidRequest(
                "the cache belongs to another model".into(),
            ));
        }
        Ok(())
    }

    /// Runs `tokens` after the ones already in `cache` (a prompt, or one generated token),
    /// appends their keys and values to it, and returns the logits asked for. Errors:
    /// `InvalidRequest` for no tokens, an id outside the vocabulary, or more tokens than the
    /// cache has room for; a refused request leaves the cache as it was.
    pub fn forward(&self, tokens: &[u32], cache: &mut Cache, which: Logits) -> Result<Tensor> {
        self.check(tokens, tokens.len(), cache)?;
        let t = tokens.len();
        if t == 1 && cache.replay && !self.device.is_cpu() && cache.steps > 0 {
            return self.decode_replayed(tokens[0], cache);
        }
        if t == 1 {
            cache.steps += 1;
        }
        let x = self.step(tokens, &[t], &mut [cache])?;
        let x = match which {
            Logits::Last if t > 1 => x.narrow(0, t - 1, 1)?,
            _ => x,
        };
        self.logits(&x)
    }

    /// One token for each of several sequences at once (a batch's decode step): `tokens[i]`
    /// follows what `caches[i]` holds. The products read each weight once for the whole batch;
    /// attention runs per sequence over its own cache. Returns `[batch, vocab]` logits, row `i`
    /// for sequence `i`. Errors as [`Model::forward`], and `InvalidRequest` when the counts
    /// differ; nothing is appended unless every sequence is accepted.
    pub fn forward_batch(&self, tokens: &[u32], caches: &mut [&mut Cache]) -> Result<Tensor> {
        if tokens.len() != caches.len() {
            return Err(Error::InvalidRequest(format!(
                "{} tokens for {} caches",
                tokens.len(),
                caches.len()
            )));
        }
        for (i, cache) in caches.iter().enumerate() {
            self.check(&tokens[i..i + 1], 1, cache)?;
        }
        let x = self.step(tokens, &vec![1; tokens.len()], caches)?;
        self.logits(&x)
    }

    /// Several prompts at once, prompt `i` after what `caches[i]` holds: the products run once
    /// over every prompt's tokens (each weight read once for the batch), attention per
    /// sequence over its own cache. Returns each prompt's last logits, `[batch, vocab]`. Errors
    /// as [`Model::forward`], and `InvalidRequest` when the counts differ; nothing is written
    /// unless every prompt is accepted.
    pub fn prefill_batch(&self, prompts: &[&[u32]], caches: &mut [&mut Cache]) -> Result<Tensor> {
        if prompts.len() != caches.len() || prompts.is_empty() {
            return Err(Error::InvalidRequest(format!(
                "{} prompts for {} caches",
                prompts.len(),
                caches.len()
            )));
        }
        for (p, cache) in prompts.iter().zip(caches.iter()) {
            self.check(p, p.len(), cache)?;
        }
        let tokens: Vec<u32> = prompts.concat();
        let lens: Vec<usize> = prompts.iter().map(|p| p.len()).collect();
        let x = self.step(&tokens, &lens, caches)?;
        let last: Vec<u32> = lens
            .iter()
            .scan(0, |end, &n| {
                *end += n;
                Some(*end as u32 - 1)
            })
            .collect();
        let rows = Tensor::from_vec_u32(&self.device, last, &[lens.len()])?;
        self.logits(&x.index_select(0, &rows)?)
    }

    /// One token through `cache`'s captured step (captured now if it has none): its inputs are
    /// the token, its position and the cache's length after it, so every replay is the same
    /// dispatches on new values.
    fn decode_replayed(&self, token: u32, cache: &mut Cache) -> Result<Tensor> {
        let at = |v: usize| Tensor::from_vec_u32(&self.device, vec![v as u32], &[1]);
        let inputs = [at(token as usize)?, at(cache.len)?, at(cache.len + 1)?];
        let inputs: Vec<&Tensor> = inputs.iter().collect();
        let out = match &mut cache.decode {
            Some(graph) => graph.run(&inputs)?,
            None => {
                let (model, kv) = (self.clone(), cache.kv.clone());
                // Unused by a single token's attention, which reads the count on the device.
                let keys = cache.len + 1;
                let (graph, out) = self.device.capture(&inputs, move |io| {
                    let run = || -> Result<Tensor> {
                        let mut kv = Cache::layers(&kv);
                        let x = model.step_on(&io[0], &io[1], (&io[2], keys), 1, &mut kv)?;
                        model.logits(&x)
                    };
                    run().map(|l| vec![l]).map_err(engine)
                })?;
                log::debug!("decode step captured: {} dispatches", graph.dispatches());
                cache.decode = Some(graph);
                out
            }
        };
        cache.len += 1;
        cache.steps += 1;
        out.into_iter()
            .next()
            .ok_or_else(|| Error::InvalidRequest("the captured step has no output".into()))
    }

    /// The final norm and the output product.
    fn logits(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.norm(x, &self.norm, self.norm_b.as_ref())?;
        Ok(x.linear(&self.output, None, None)?)
    }

    /// The blocks over `tokens`, which are consecutive segments of `lens[i]` tokens, segment `i`
    /// following what `caches[i]` holds (a prompt, or single tokens): the last hidden state of
    /// every token, `[tokens, dim]`. Writes every segment's keys and values into its cache.
    fn step(&self, tokens: &[u32], lens: &[usize], caches: &mut [&mut Cache]) -> Result<Tensor> {
        let t = tokens.len();
        let ids = Tensor::from_vec_u32(&self.device, tokens.to_vec(), &[t])?;
        let mut segments = Vec::with_capacity(lens.len());
        let mut positions = Vec::with_capacity(t);
        for (cache, &len) in caches.iter().zip(lens) {
            self.allocate(cache)?;
            let at: Vec<u32> = (cache.len..cache.len + len).map(|p| p as u32).collect();
            positions.extend_from_slice(&at);
            let keys = cache.len + len;
            segments.push((
                Tensor::from_vec_u32(&self.device, at, &[len])?,
                Tensor::from_vec_u32(&self.device, vec![keys as u32], &[1])?,
                keys,
            ));
        }
        let pos = Tensor::from_vec_u32(&self.device, positions, &[t])?;
        let x = match caches {
            [cache] => {
                let (_, len, keys) = &segments[0];
                self.step_on(&ids, &pos, (len, *keys), t, &mut Cache::layers(&cache.kv))?
            }
            _ => {
                let mut layers: Vec<_> = caches.iter().map(|c| Cache::layers(&c.kv)).collect();
                self.step_batch(&ids, &pos, lens, &segments, &mut layers)?
            }
        };
        for (cache, &len) in caches.iter_mut().zip(lens) {
            cache.len += len;
        }
        Ok(x)
    }

    /// The blocks over the `t` tokens `ids` of one sequence at positions `pos` (u32 `[t]`,
    /// consecutive), writing their keys and values into `kv` and attending over its first
    /// `len` (u32 `[1]`, the last position + 1; `keys` on the host). Every value that changes between tokens is a
    /// device tensor here, so a single-token step can be captured and replayed.
    fn step_on(
        &self,
        ids: &Tensor,
        pos: &Tensor,
        len: (&Tensor, usize),
        t: usize,
        kv: &mut Layers,
    ) -> Result<Tensor> {
        let mut x = self.embed(ids, pos)?;
        let rope = self.rope_at(kv, pos)?;
        for i in 0..self.blocks.len() {
            let (q, k, v) = self.qkv(i, &x, t, rope.as_ref())?;
            kv.k[i].index_copy(1, pos, &k)?;
            kv.v[i].index_copy(1, pos, &v)?;
            let a = self.attend(&q, &kv.k[i], &kv.v[i], len)?;
            x = self.feed_forward(i, &a, &x, t)?;
        }
        Ok(x)
    }

    /// [`Model::step_on`] for several sequences (one token each, or any segments): the
    /// products run once over every token; each segment's attention runs over its own cache.
    fn step_batch(
        &self,
        ids: &Tensor,
        pos: &Tensor,
        lens: &[usize],
        segments: &[(Tensor, Tensor, usize)],
        kv: &mut [MutexGuard<'_, Layers>],
    ) -> Result<Tensor> {
        let t = lens.iter().sum();
        let mut x = self.embed(ids, pos)?;
        // Each sequence's RoPE rows from its own tables, in token order.
        let rope = match self.config.rope_dim {
            0 => None,
            _ => {
                let (mut cos, mut sin) = (Vec::new(), Vec::new());
                for (layers, (at, _, _)) in kv.iter().zip(segments) {
                    let (c, s) = self.rope_at(layers, at)?.expect("rope_dim > 0");
                    cos.push(c);
                    sin.push(s);
                }
                let join = |v: &[Tensor]| Tensor::cat(&v.iter().collect::<Vec<_>>(), 0);
                Some((join(&cos)?, join(&sin)?))
            }
        };
        for i in 0..self.blocks.len() {
            let (q, k, v) = self.qkv(i, &x, t, rope.as_ref())?;
            let mut outs = Vec::with_capacity(lens.len());
            let mut start = 0;
            for (layers, ((at, len, keys), &n)) in kv.iter_mut().zip(segments.iter().zip(lens)) {
                let part = |x: &Tensor| x.narrow(1, start, n);
                layers.k[i].index_copy(1, at, &part(&k)?)?;
                layers.v[i].index_copy(1, at, &part(&v)?)?;
                let (k, v) = (&layers.k[i], &layers.v[i]);
                outs.push(self.attend(&part(&q)?, k, v, (len, *keys))?);
                start += n;
            }
            let a = Tensor::cat(&outs.iter().collect::<Vec<_>>(), 1)?;
            x = self.feed_forward(i, &a, &x, t)?;
        }
        Ok(x)
    }

    /// The token embeddings of `ids`, plus GPT-2's learned positions at `pos`.
    fn embed(&self, ids: &Tensor, pos: &Tensor) -> Result<Tensor> {
        let x = Tensor::embedding(&self.embed, ids)?;
        Ok(match &self.positions {
            Some(table) => x.add(&Tensor::embedding(table, pos)?)?,
            None => x,
        })
    }

    /// RoPE's rows for positions `pos` from a cache's tables: `[t, rope_dim / 2]` each.
    fn rope_at(&self, kv: &Layers, pos: &Tensor) -> Result<Option<(Tensor, Tensor)>> {
        let Some((cos, sin)) = &kv.rope else {
            return Ok(None);
        };
        let rows = |table: &Tensor| -> Result<Tensor> { Ok(Tensor::embedding(table, pos)?) };
        Ok(Some((rows(cos)?, rows(sin)?)))
    }

    /// Block `i`'s normalised input projected to q `[1, t, heads, d]`, k and v `[1, t,
    /// kv_heads, d]`, with RoPE on q and k.
    fn qkv(
        &self,
        i: usize,
        x: &Tensor,
        t: usize,
        rope: Option<&(Tensor, Tensor)>,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let c = &self.config;
        let b = &self.blocks[i];
        let (q_out, kv_out) = (c.heads * c.head_dim, c.kv_heads * c.head_dim);
        let h = self.norm(x, &b.attn_norm, b.attn_norm_b.as_ref())?;
        let (q, k, v) = match &b.qkv {
            Qkv::Separate(sep) => {
                let SeparateQkv {
                    wq,
                    wk,
                    wv,
                    bq,
                    bk,
                    bv,
                } = &**sep;
                (
                    h.linear(wq, bq.as_ref(), None)?,
                    h.linear(wk, bk.as_ref(), None)?,
                    h.linear(wv, bv.as_ref(), None)?,
                )
            }
            Qkv::Fused { w, b } => {
                let y = h.linear(w, b.as_ref(), None)?;
                (
                    y.narrow(1, 0, q_out)?,
                    y.narrow(1, q_out, kv_out)?,
                    y.narrow(1, q_out + kv_out, kv_out)?,
                )
            }
        };
        let q = q.reshape(&[1, t, c.heads, c.head_dim])?;
        let k = k.reshape(&[1, t, c.kv_heads, c.head_dim])?;
        let v = v.reshape(&[1, t, c.kv_heads, c.head_dim])?;
        Ok(match rope {
            Some((cos, sin)) => (self.rope(&q, cos, sin)?, self.rope(&k, cos, sin)?, v),
            None => (q, k, v),
        })
    }

    /// Block `i` after attention: the output projection added to the residual `x`, then the
    /// feed-forward (SwiGLU, or GPT-2's GELU) added in turn.
    fn feed_forward(&self, i: usize, a: &Tensor, x: &Tensor, t: usize) -> Result<Tensor> {
        let c = &self.config;
        let b = &self.blocks[i];
        let a = a.reshape(&[t, c.heads * c.head_dim])?;
        let x = a.linear_add(&b.wo, b.bo.as_ref(), x)?;
        let h = self.norm(&x, &b.ffn_norm, b.ffn_norm_b.as_ref())?;
        let inner = match &b.ffn {
            Ffn::Stacked(w) => {
                let y = h.linear(w, None, None)?;
                let g = y.narrow(1, 0, c.ffn)?.silu()?;
                g.mul(&y.narrow(1, c.ffn, c.ffn)?)?
            }
            Ffn::Apart { gate, up, b } => {
                let g = h.linear(gate, None, Some(UnaryOp::Silu))?;
                g.mul(&h.linear(up, b.as_ref(), None)?)?
            }
            Ffn::Gelu { up, b } => h.linear(up, b.as_ref(), Some(UnaryOp::GeluTanh))?,
        };
        Ok(inner.linear_add(&b.down, b.down_b.as_ref(), &x)?)
    }

    /// The architecture's normalisation: LayerNorm with its bias (GPT-2) or RMSNorm.
    fn norm(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        Ok(match self.config.arch {
            Arch::Gpt2 => x.layer_norm(Some(w), b, self.config.eps)?,
            _ => x.rms_norm(Some(w), self.config.eps)?,
        })
    }

    /// RoPE's tables for `positions` (one per token): the cosine and sine of each rotated
    /// pair's angle, `[t, rope_dim / 2]` each (see [`Tensor::rope`]).
    fn rope_tables(&self, positions: &[usize]) -> Result<(Tensor, Tensor)> {
        let (half, t) = (self.config.rope_dim / 2, positions.len());
        let (mut cos, mut sin) = (Vec::with_capacity(t * half), Vec::with_capacity(t * half));
        for &p in positions {
            for f in &self.inv_freq {
                let a = p as f64 * f;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        Ok((
            Tensor::from_vec(&self.device, cos, &[t, half])?,
            Tensor::from_vec(&self.device, sin, &[t, half])?,
        ))
    }

    /// RoPE on `[1, t, heads, head_dim]` with the checkpoint's pairing: one kernel.
    fn rope(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let layout = match self.config.rope_style {
            RopeStyle::Adjacent => RopeLayout::Adjacent,
            RopeStyle::Halves => RopeLayout::Halves,
        };
        Ok(x.rope(cos, sin, layout)?)
    }

    /// Attention of `q` `[1, t, heads, d]` (the last `t` positions) over a cache's first `len`
    /// keys and values (`[1, capacity, kv_heads, d]`; `len` u32 `[1]`). Query heads `j·rep ..
    /// (j+1)·rep` share key/value head `j`. For one new token those `rep` heads become `rep`
    /// queries of head `j`, so the cache is read as it is; for a prompt the key/value heads are
    /// repeated.
    fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        (len, keys): (&Tensor, usize),
    ) -> Result<Tensor> {
        let c = &self.config;
        let t = q.shape()[1];
        let rep = c.heads / c.kv_heads;
        if t == 1 || rep == 1 {
            return self.attend_keys(q, k, v, len);
        }
        // A prompt with grouped heads: the key/value heads are repeated, over the `keys` written
        // so far only (prompts are never captured, so that count is the host's to know).
        let (k, v) = (k.narrow(1, 0, keys)?, v.narrow(1, 0, keys)?);
        self.attend_keys(q, &self.repeat_kv(&k)?, &self.repeat_kv(&v)?, len)
    }

    /// [`Model::attend`] over keys and values as given.
    fn attend_keys(&self, q: &Tensor, k: &Tensor, v: &Tensor, len: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        let t = q.shape()[1];
        let rep = c.heads / c.kv_heads;
        if t == 1 && rep > 1 {
            let q = q
                .reshape(&[1, c.kv_heads, rep, c.head_dim])?
                .transpose(1, 2)?;
            let every = AttentionOptions {
                causal: false,
                scale: None,
            };
            let a = q.attention_cached(k, v, len, every)?; // [1, rep, kv_heads, d]
            return Ok(a.transpose(1, 2)?.reshape(&[1, 1, c.heads, c.head_dim])?);
        }
        Ok(q.attention_cached(k, v, len, CAUSAL)?)
    }

    /// Grouped-query attention's key/value heads repeated to the query heads' count.
    fn repeat_kv(&self, x: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        if c.kv_heads == c.heads {
            return Ok(x.clone());
        }
        let s = x.shape().to_vec();
        let rep = c.heads / c.kv_heads;
        Ok(x.reshape(&[s[0], s[1], c.kv_heads, 1, c.head_dim])?
            .broadcast_to(&[s[0], s[1], c.kv_heads, rep, c.head_dim])?
            .reshape(&[s[0], s[1], c.heads, c.head_dim])?)
    }
}

/// Weights with the same columns and storage type stacked by rows into one (see
/// [`StackSource`]), from tensors already loaded; `None` where their types or columns differ.
/// Rows are whole blocks of their format, so the stack is the rows' bytes in turn.
pub(crate) fn stack_rows(ws: &[&Tensor]) -> Result<Option<Tensor>> {
    let Some(first) = ws.first() else {
        return Ok(None);
    };
    let (dtype, cols) = (first.dtype(), first.shape().get(1).copied());
    if ws
        .iter()
        .any(|w| w.dtype() != dtype || w.rank() != 2 || w.shape().get(1).copied() != cols)
    {
        return Ok(None);
    }
    let mut bytes = Vec::new();
    for w in ws {
        bytes.extend_from_slice(&w.to_bytes()?);
    }
    let rows = ws.iter().map(|w| w.shape()[0]).sum::<usize>();
    Ok(Some(Tensor::from_byte_vec(
        first.device(),
        bytes,
        dtype,
        &[rows, cols.unwrap_or(0)],
    )?))
}
