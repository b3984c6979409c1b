//! Graph rewrites at load that leave less to run, as onnxruntime's basic graph optimizations
//! do: `Identity` nodes dropped (their readers read the source), and constant scales and shifts
//! after a convolution folded into its weight and bias (`Mul` then `Add` by a scalar or by one
//! value per output channel: PaddlePaddle's "learnable affine" blocks, a bias exported as its
//! own `Add`), for `Conv` and `ConvTranspose`. `BatchNormalization` after a convolution is
//! folded in `lib.rs` the same way.

use crate::own_domain;
use crate::proto::{GraphProto, NodeProto};
use crate::value::Value;
use kiln::{Device, Result, Tensor};
use std::collections::{HashMap, HashSet};

/// Drops `Identity` nodes whose output is neither a graph output nor read by a subgraph
/// (`pinned`), renaming their readers' inputs to the source. Returns how many went.
pub(crate) fn drop_identities(graph: &mut GraphProto, pinned: &HashSet<String>) -> usize {
    let outputs: HashSet<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
    let mut rename: HashMap<String, String> = HashMap::new();
    let mut kept = Vec::with_capacity(graph.node.len());
    for mut node in std::mem::take(&mut graph.node) {
        for i in node.input.iter_mut() {
            if let Some(to) = rename.get(i) {
                *i = to.clone();
            }
        }
        let droppable = own_domain(&node)
            && node.op_type == "Identity"
            && node.input.len() == 1
            && node.output.len() == 1
            && !node.input[0].is_empty()
            && !outputs.contains(node.output[0].as_str())
            && !pinned.contains(&node.output[0]);
        if droppable {
            rename.insert(node.output[0].clone(), node.input[0].clone());
        } else {
            kept.push(node);
        }
    }
    let dropped = rename.len();
    graph.node = kept;
    dropped
}

/// Folds `Mul` or `Add` by a constant (a scalar, or one value per output channel shaped
/// `[c, 1, 1]` / `[1, c, 1, 1]`, one 1 fewer for a 1-D convolution) into the convolution whose
/// output it alone reads, when that convolution's weight and bias are constants: `w·s`,
/// `b·s` for a scale, `b + t` for a shift. Returns how many were folded.
pub(crate) fn fold_affine(
    graph: &mut GraphProto,
    constants: &mut HashMap<String, Value>,
    pinned: &HashSet<String>,
    device: &Device,
) -> Result<usize> {
    let mut folded = 0;
    loop {
        let mut readers: HashMap<&str, usize> = HashMap::new();
        for n in &graph.node {
            for i in &n.input {
                *readers.entry(i.as_str()).or_default() += 1;
            }
        }
        let convs: HashMap<&str, usize> = graph
            .node
            .iter()
            .enumerate()
            .filter(|(_, n)| {
                own_domain(n)
                    && matches!(n.op_type.as_str(), "Conv" | "ConvTranspose")
                    && n.output.len() == 1
            })
            .map(|(i, n)| (n.output[0].as_str(), i))
            .collect();
        let outputs: HashSet<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
        let mut found = None;
        for (m, node) in graph.node.iter().enumerate() {
            let scale = match node.op_type.as_str() {
                "Mul" => true,
                "Add" => false,
                _ => continue,
            };
            if !own_domain(node) || node.input.len() != 2 || node.output.len() != 1 {
                continue;
            }
            for (x, k) in [(0, 1), (1, 0)] {
                let (x, k) = (&node.input[x], &node.input[k]);
                let Some(&c) = convs.get(x.as_str()) else {
                    continue;
                };
                if readers.get(x.as_str()) != Some(&1)
                    || outputs.contains(x.as_str())
                    || pinned.contains(x)
                {
                    continue;
                }
                if let Some(new) = folded_weights(&graph.node[c], k, scale, constants)? {
                    found = Some((m, c, new));
                    break;
                }
            }
            if found.is_some() {
                break;
            }
        }
        let Some((m, c, (w, wdims, b))) = found else {
            return Ok(folded);
        };
        let out = graph.node[m].output[0].clone();
        let (wn, bn) = (
            format!("{out}.kiln_affine_w"),
            format!("{out}.kiln_affine_b"),
        );
        let c_out = b.len();
        constants.insert(
            wn.clone(),
            Value::Float(Tensor::from_vec(device, w, &wdims)?),
        );
        constants.insert(
            bn.clone(),
            Value::Float(Tensor::from_vec(device, b, &[c_out])?),
        );
        let conv = &mut graph.node[c];
        conv.input.truncate(2);
        conv.input[1] = wn;
        conv.input.push(bn);
        conv.output[0] = out;
        graph.node.remove(m);
        folded += 1;
    }
}

/// The weight (values, dims) and bias of convolution `conv` with the constant `k` multiplied
/// in (`scale`) or added, if `k` is a scalar or per-output-channel constant and the weight and
/// bias are constants.
type Folded = (Vec<f32>, Vec<usize>, Vec<f32>);

fn folded_weights(
    conv: &NodeProto,
    k: &str,
    scale: bool,
    constants: &HashMap<String, Value>,
) -> Result<Option<Folded>> {
    // Values a device cannot hand back without blocking (WebGPU in a browser) are not folded.
    let host = |name: &str| -> Result<Option<(Vec<f64>, Vec<usize>)>> {
        match constants.get(name) {
            Some(v @ Value::Float(t)) => Ok(v.to_f64().ok().map(|h| (h, t.shape().to_vec()))),
            _ => Ok(None),
        }
    };
    let (Some((kv, kdims)), Some((w, wdims))) = (host(k)?, host(&conv.input[1])?) else {
        return Ok(None);
    };
    let rank = wdims.len();
    let Some(channels) = OutChannels::new(conv, &wdims) else {
        return Ok(None);
    };
    let c_out = channels.count;
    // The constant's shape without leading ones: [] (a scalar) or [c_out, 1, ...] reaching
    // the output's channel axis, so that broadcasting it does not grow the output.
    let trimmed: Vec<usize> = kdims.iter().copied().skip_while(|&d| d == 1).collect();
    let per_channel = kv.len() == c_out
        && kdims.len() < rank + 1
        && kdims.len() >= rank - 1
        && trimmed.first() == Some(&c_out)
        && trimmed.len() == rank - 1
        && trimmed[1..].iter().all(|&d| d == 1);
    if kdims.len() > rank || !(kv.len() == 1 || per_channel) {
        return Ok(None);
    }
    let at = |co: usize| if kv.len() == 1 { kv[0] } else { kv[co] };
    let bias = match conv.input.get(2).filter(|n| !n.is_empty()) {
        Some(n) => match host(n)? {
            Some((b, _)) if b.len() == c_out => b,
            _ => return Ok(None),
        },
        None => vec![0.0; c_out],
    };
    let (w, b): (Vec<f32>, Vec<f32>) = if scale {
        (
            w.iter()
                .enumerate()
                .map(|(i, &v)| (v * at(channels.of(i))) as f32)
                .collect(),
            (0..c_out).map(|co| (bias[co] * at(co)) as f32).collect(),
        )
    } else {
        (
            w.iter().map(|&v| v as f32).collect(),
            (0..c_out).map(|co| (bias[co] + at(co)) as f32).collect(),
        )
    };
    Ok(Some((w, wdims, b)))
}

/// Which output channel each value of a convolution's weight feeds: a `Conv` weight is
/// `[c_out, c_in / groups, kh, kw]`; a `ConvTranspose` weight `[c_in, c_out / groups, kh, kw]`,
/// input channel `ci` in group `ci / (c_in / groups)`, whose outputs are that group's
/// `c_out / groups` channels.
pub(crate) struct OutChannels {
    /// Output channels.
    pub count: usize,
    /// `[c_in, c_out / groups, taps]` of a ConvTranspose's weight; `None` for a Conv.
    transposed: Option<(usize, usize, usize)>,
    /// Weight values per output channel of a Conv.
    per: usize,
}

impl OutChannels {
    /// The mapping for convolution `node` (a `Conv` or `ConvTranspose`) of weight dims `wdims`,
    /// if they fit its `group` attribute.
    pub(crate) fn new(node: &NodeProto, wdims: &[usize]) -> Option<OutChannels> {
        let groups = node
            .attribute
            .iter()
            .find(|a| a.name == "group")
            .map_or(1, |a| a.i.max(1) as usize);
        let total: usize = wdims.iter().product();
        match node.op_type.as_str() {
            "Conv" if wdims.len() >= 3 && wdims[0] > 0 => Some(OutChannels {
                count: wdims[0],
                transposed: None,
                per: total / wdims[0],
            }),
            "ConvTranspose"
                if wdims.len() >= 3 && wdims[0].is_multiple_of(groups) && wdims[1] > 0 =>
            {
                let taps = wdims[2..].iter().product();
                Some(OutChannels {
                    count: wdims[1] * groups,
                    transposed: Some((wdims[0], wdims[1], taps)),
                    per: 0,
                })
            }
            _ => None,
        }
    }

    /// The output channel of weight value `i`.
    pub(crate) fn of(&self, i: usize) -> usize {
        match self.transposed {
            None => i / self.per,
            Some((c_in, cog, taps)) => {
                let ci = i / (cog * taps);
                let groups = self.count / cog;
                (ci / (c_in / groups)) * cog + (i / taps) % cog
            }
        }
    }
}
