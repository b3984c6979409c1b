//! The example networks: an MLP and a small convnet for the digits, and a character-level
//! transformer (embedding, causal multi-head self-attention, layer norm, a GELU MLP).

use kiln::nn::{
    Activation, Conv2d, Embedding, Flatten, LayerNorm, Linear, MaxPool2d, Module, Sequential,
};
use kiln::{AttentionOptions, Conv2dOptions, Device, Result, Tensor, UnaryOp};

/// 64 → 128 → ReLU → 10: the digits classifier.
pub fn digits_mlp(dev: &Device, hidden: usize) -> Result<Sequential> {
    Ok(Sequential::new()
        .push(Linear::new(dev, 64, hidden, 1)?)
        .push(Activation(UnaryOp::Relu))
        .push(Linear::new(dev, hidden, 10, 2)?))
}

/// [n, 1, 8, 8] → conv 3×3 (16) → ReLU → pool 2 → conv 3×3 (32) → ReLU → pool 2 → 10.
pub fn digits_cnn(dev: &Device) -> Result<Sequential> {
    let same = Conv2dOptions {
        padding: (1, 1),
        ..Default::default()
    };
    let pool = MaxPool2d {
        kernel: (2, 2),
        stride: (2, 2),
    };
    Ok(Sequential::new()
        .push(Conv2d::new(dev, 1, 16, (3, 3), same, 11)?)
        .push(Activation(UnaryOp::Relu))
        .push(pool)
        .push(Conv2d::new(dev, 16, 32, (3, 3), same, 12)?)
        .push(Activation(UnaryOp::Relu))
        .push(pool)
        .push(Flatten)
        .push(Linear::new(dev, 32 * 2 * 2, 10, 13)?))
}

/// One pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x)).
pub struct Block {
    ln1: LayerNorm,
    qkv: Linear,
    proj: Linear,
    ln2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    heads: usize,
}

impl Block {
    fn new(dev: &Device, dim: usize, heads: usize, seed: u64) -> Result<Block> {
        Ok(Block {
            ln1: LayerNorm::new(dev, dim)?,
            qkv: Linear::new(dev, dim, 3 * dim, seed)?,
            proj: Linear::new(dev, dim, dim, seed + 1)?,
            ln2: LayerNorm::new(dev, dim)?,
            fc1: Linear::new(dev, dim, 4 * dim, seed + 2)?,
            fc2: Linear::new(dev, 4 * dim, dim, seed + 3)?,
            heads,
        })
    }

    /// `x` plus causal multi-head self-attention over `ln1(x)` (`x: [b, t, d]`): one
    /// projection to q, k and v, read in place as `[b, t, 3, heads, d / heads]` by the
    /// attention op, and the output projection adding `x` in its epilogue.
    fn attention(&self, x: &Tensor) -> Result<Tensor> {
        let [b, t, d] = x.shape()[..] else {
            unreachable!("blocks see [batch, time, dim]")
        };
        let causal = AttentionOptions {
            causal: true,
            scale: None,
        };
        let y = self
            .qkv
            .forward(&self.ln1.forward(x)?)?
            .reshape(&[b, t, 3, self.heads, d / self.heads])?
            .attention_packed(causal)?
            .reshape(&[b, t, d])?;
        self.proj.forward_add(&y, x)
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.attention(x)?;
        let m = self.fc1.forward(&self.ln2.forward(&x)?)?.gelu()?;
        self.fc2.forward_add(&m, &x)
    }

    fn parts(&self, prefix: &str) -> Vec<(String, &dyn Module)> {
        let parts: [(&str, &dyn Module); 6] = [
            ("ln1", &self.ln1),
            ("qkv", &self.qkv),
            ("proj", &self.proj),
            ("ln2", &self.ln2),
            ("fc1", &self.fc1),
            ("fc2", &self.fc2),
        ];
        parts
            .into_iter()
            .map(|(n, m)| (format!("{prefix}.{n}"), m))
            .collect()
    }

    fn parts_mut(&mut self, prefix: &str) -> Vec<(String, &mut dyn Module)> {
        let parts: [(&str, &mut dyn Module); 6] = [
            ("ln1", &mut self.ln1),
            ("qkv", &mut self.qkv),
            ("proj", &mut self.proj),
            ("ln2", &mut self.ln2),
            ("fc1", &mut self.fc1),
            ("fc2", &mut self.fc2),
        ];
        parts
            .into_iter()
            .map(|(n, m)| (format!("{prefix}.{n}"), m))
            .collect()
    }
}

/// The parameters of named sub-modules, as `"{prefix}.{name}"`.
fn collect(parts: Vec<(String, &dyn Module)>) -> Vec<(String, &Tensor)> {
    parts
        .into_iter()
        .flat_map(|(p, m)| {
            m.parameters()
                .into_iter()
                .map(move |(n, t)| (format!("{p}.{n}"), t))
        })
        .collect()
}

fn collect_mut(parts: Vec<(String, &mut dyn Module)>) -> Vec<(String, &mut Tensor)> {
    parts
        .into_iter()
        .flat_map(|(p, m)| {
            m.parameters_mut()
                .into_iter()
                .map(move |(n, t)| (format!("{p}.{n}"), t))
        })
        .collect()
}

/// A GPT-style character model: token and position embeddings, `layers` blocks, a final layer
/// norm and a linear head to the vocabulary.
pub struct CharTransformer {
    tok: Embedding,
    pos: Embedding,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    head: Linear,
    /// Longest context the model sees.
    pub context: usize,
}

pub struct TransformerConfig {
    pub vocab: usize,
    pub dim: usize,
    pub heads: usize,
    pub layers: usize,
    pub context: usize,
}

impl CharTransformer {
    pub fn new(dev: &Device, c: &TransformerConfig) -> Result<CharTransformer> {
        // Small embeddings (N(0, 0.1²)) keep the first logits near uniform.
        let small = |e: Embedding| -> Result<Embedding> {
            Ok(Embedding {
                weight: e.weight.mul_scalar(0.1)?.with_grad()?,
            })
        };
        Ok(CharTransformer {
            tok: small(Embedding::new(dev, c.vocab, c.dim, 21)?)?,
            pos: small(Embedding::new(dev, c.context, c.dim, 22)?)?,
            blocks: (0..c.layers)
                .map(|i| Block::new(dev, c.dim, c.heads, 100 + 10 * i as u64))
                .collect::<Result<_>>()?,
            ln_f: LayerNorm::new(dev, c.dim)?,
            head: Linear::new(dev, c.dim, c.vocab, 23)?,
            context: c.context,
        })
    }
}

impl Module for CharTransformer {
    /// `ids: [b, t]` (u32, t ≤ context) → logits `[b, t, vocab]`.
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let dev = ids.device();
        let t = ids.shape()[1];
        let positions = Tensor::from_vec_u32(dev, (0..t as u32).collect(), &[t])?;
        let mut x = self.tok.forward(ids)?.add(&self.pos.forward(&positions)?)?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        self.head.forward(&self.ln_f.forward(&x)?)
    }

    fn parameters(&self) -> Vec<(String, &Tensor)> {
        let mut parts: Vec<(String, &dyn Module)> =
            vec![("tok".into(), &self.tok), ("pos".into(), &self.pos)];
        for (i, b) in self.blocks.iter().enumerate() {
            parts.extend(b.parts(&format!("blocks.{i}")));
        }
        parts.push(("ln_f".into(), &self.ln_f));
        parts.push(("head".into(), &self.head));
        collect(parts)
    }

    fn parameters_mut(&mut self) -> Vec<(String, &mut Tensor)> {
        let mut parts: Vec<(String, &mut dyn Module)> =
            vec![("tok".into(), &mut self.tok), ("pos".into(), &mut self.pos)];
        for (i, b) in self.blocks.iter_mut().enumerate() {
            parts.extend(b.parts_mut(&format!("blocks.{i}")));
        }
        parts.push(("ln_f".into(), &mut self.ln_f));
        parts.push(("head".into(), &mut self.head));
        collect_mut(parts)
    }
}
