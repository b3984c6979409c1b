//! Activations run inside the convolution before them: a `Conv` whose output only an
//! activation reads runs as kiln's `conv2d_act`, which applies the activation to each output
//! plane as the kernel finishes it (on the CPU), so the convolution's output is neither stored
//! whole nor read again. onnxruntime fuses such pairs at load too (`ConvActivationFusion`).
//!
//! The activations recognised: any node that is one of kiln's unary ops (`Relu`, `HardSwish`,
//! `Sigmoid`, `LeakyRelu`, ...; the op registry's ONNX names), `Clip` with constant bounds,
//! and the compositions exporters write for two of them:
//! - SiLU: `Mul(x, Sigmoid(x))` (YOLOv5/v8);
//! - HardSwish: `Mul(x, HardSigmoid(x))` with α = 1/6, β = 1/2, and PaddlePaddle's
//!   `Div(Mul(x, Clip(Add(x, 3), 0, 6)), 6)` (or `· (1/6)`);
//! - GELU: `Mul(Mul(x, Add(Erf(Div(x, √2)), 1)), 0.5)` (PyTorch's and Paddle's export).

use crate::own_domain;
use crate::proto::{GraphProto, NodeProto};
use crate::value::Value;
use kiln::UnaryOp;
use std::collections::{HashMap, HashSet};

/// What a convolution runs after itself: the nodes it stands in for (the last one names the
/// output) and their op.
#[derive(Clone, Debug)]
pub(crate) struct Fused {
    pub nodes: Vec<usize>,
    pub op: UnaryOp,
}

/// Fusions of the top-level graph, by the convolution's node index.
pub(crate) type Fusions = HashMap<usize, Fused>;

/// The graph as the matcher sees it.
struct View<'g> {
    graph: &'g GraphProto,
    constants: &'g HashMap<String, Value>,
    opset: i64,
    /// Nodes reading each value (a node reading it twice counted once).
    readers: HashMap<&'g str, Vec<usize>>,
    /// Values read by a subgraph or returned by the graph: never fused away.
    pinned: HashSet<String>,
}

/// The top-level graph's fusable convolutions. `subgraph_reads`: the names `If` branches and
/// other subgraphs read from this graph, which are never fused away.
pub(crate) fn find(
    graph: &GraphProto,
    constants: &HashMap<String, Value>,
    opset: i64,
    subgraph_reads: &HashSet<String>,
) -> Fusions {
    let mut readers: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut pinned = subgraph_reads.clone();
    pinned.extend(graph.output.iter().map(|o| o.name.clone()));
    for (i, n) in graph.node.iter().enumerate() {
        for name in &n.input {
            let r = readers.entry(name.as_str()).or_default();
            if r.last() != Some(&i) {
                r.push(i);
            }
        }
    }
    let v = View {
        graph,
        constants,
        opset,
        readers,
        pinned,
    };
    let mut fusions = Fusions::new();
    for (c, conv) in graph.node.iter().enumerate() {
        if !own_domain(conv) || conv.op_type != "Conv" || conv.output.len() != 1 {
            continue;
        }
        if let Some(f) = v.activation_of(c, &conv.output[0]) {
            fusions.insert(c, f);
        }
    }
    fusions
}

impl View<'_> {
    fn node(&self, i: usize) -> &NodeProto {
        &self.graph.node[i]
    }

    /// The nodes reading `name`, if nothing outside the top-level nodes does.
    fn readers(&self, name: &str) -> Option<&[usize]> {
        if self.pinned.contains(name) {
            return None;
        }
        self.readers.get(name).map(Vec::as_slice)
    }

    /// The one node reading `name`'s output, if exactly one does.
    fn only_reader(&self, name: &str) -> Option<usize> {
        match self.readers(name)? {
            &[r] => Some(r),
            _ => None,
        }
    }

    /// A constant scalar input.
    fn scalar(&self, name: &str) -> Option<f32> {
        match self.constants.get(name)? {
            v @ Value::Float(t) if t.numel() == 1 => Some(v.to_f64().ok()?[0] as f32),
            _ => None,
        }
    }

    /// Node `i` as `op_type(x, constant)` (either order for a commutative op): the constant.
    fn with_constant(&self, i: usize, op_type: &str, x: &str) -> Option<f32> {
        let n = self.node(i);
        if !own_domain(n) || n.op_type != op_type || n.input.len() != 2 || n.output.len() != 1 {
            return None;
        }
        let commutes = matches!(op_type, "Add" | "Mul");
        match (n.input[0].as_str(), n.input[1].as_str()) {
            (a, b) if a == x => self.scalar(b),
            (a, b) if b == x && commutes => self.scalar(a),
            _ => None,
        }
    }

    /// Node `i` as `Mul(a, b)` in either order.
    fn is_product(&self, i: usize, a: &str, b: &str) -> bool {
        let n = self.node(i);
        own_domain(n)
            && n.op_type == "Mul"
            && n.output.len() == 1
            && n.input.len() == 2
            && ((n.input[0] == a && n.input[1] == b) || (n.input[0] == b && n.input[1] == a))
    }

    /// The activation that node `c`'s output `x` alone feeds, if it is one.
    fn activation_of(&self, c: usize, x: &str) -> Option<Fused> {
        let readers = self.readers(x)?;
        let after = |i: &usize| *i > c;
        if !readers.iter().all(after) {
            return None;
        }
        match *readers {
            [a] => Some(Fused {
                nodes: vec![a],
                op: self.unary(a)?,
            }),
            [p, q] => [(p, q), (q, p)]
                .into_iter()
                .find_map(|(p, q)| self.gated(x, p, q).or_else(|| self.gelu(x, p, q))),
            _ => None,
        }
    }

    /// `x · gate(x)`: `gate` is node `g`, the product node `m`.
    fn gated(&self, x: &str, g: usize, m: usize) -> Option<Fused> {
        let gate = self.node(g);
        if !own_domain(gate) || gate.output.len() != 1 {
            return None;
        }
        let gated = &gate.output[0];
        if gate.input.len() == 1 && gate.input[0] == x && self.only_reader(gated) == Some(m) {
            if !self.is_product(m, x, gated) {
                return None;
            }
            let op = match gate.op_type.as_str() {
                "Sigmoid" => UnaryOp::Silu,
                "HardSigmoid" if self.unary(g)? == UnaryOp::HardSigmoid(1.0 / 6.0, 0.5) => {
                    UnaryOp::HardSwish
                }
                _ => return None,
            };
            return Some(Fused {
                nodes: vec![g, m],
                op,
            });
        }
        // PaddlePaddle's hard swish: Div(Mul(x, Clip(Add(x, 3), 0, 6)), 6).
        if self.with_constant(g, "Add", x)? != 3.0 {
            return None;
        }
        let k = self.only_reader(gated)?;
        if self.unary(k)? != UnaryOp::Clamp(0.0, 6.0)
            || self.only_reader(&self.node(k).output[0])? != m
        {
            return None;
        }
        if !self.is_product(m, x, &self.node(k).output[0]) {
            return None;
        }
        let product = &self.node(m).output[0];
        let d = self.only_reader(product)?;
        let six = match self.with_constant(d, "Div", product) {
            Some(s) => s == 6.0,
            None => self.with_constant(d, "Mul", product)? == 1.0 / 6.0,
        };
        six.then(|| Fused {
            nodes: vec![g, k, m, d],
            op: UnaryOp::HardSwish,
        })
    }

    /// GELU as exporters write it, `0.5 · (x · (1 + erf(x / √2)))`: `Div(x, √2)` (or
    /// `Mul(x, 1/√2)`) is node `d`, the product with `x` node `m`.
    fn gelu(&self, x: &str, d: usize, m: usize) -> Option<Fused> {
        let near = |v: f32, want: f64| (f64::from(v) - want).abs() < 1e-6;
        let scaled = match self.with_constant(d, "Div", x) {
            Some(c) => near(c, std::f64::consts::SQRT_2),
            None => near(
                self.with_constant(d, "Mul", x)?,
                std::f64::consts::FRAC_1_SQRT_2,
            ),
        };
        let e = self.only_reader(&self.node(d).output[0])?;
        if !scaled || self.unary(e)? != UnaryOp::Erf {
            return None;
        }
        let erf = &self.node(e).output[0];
        let a = self.only_reader(erf)?;
        let one_plus = &self.node(a).output[0];
        if self.with_constant(a, "Add", erf)? != 1.0
            || self.only_reader(one_plus)? != m
            || !self.is_product(m, x, one_plus)
        {
            return None;
        }
        let product = &self.node(m).output[0];
        let h = self.only_reader(product)?;
        let half = match self.with_constant(h, "Mul", product) {
            Some(c) => c == 0.5,
            None => self.with_constant(h, "Div", product)? == 2.0,
        };
        half.then(|| Fused {
            nodes: vec![d, e, a, m, h],
            op: UnaryOp::Gelu,
        })
    }

    /// Node `i` as one of kiln's unary ops, if it is one: the op registry's ONNX names with
    /// their attributes, and `Clip` whose bounds are attributes (before opset 11) or constants,
    /// in order.
    fn unary(&self, i: usize) -> Option<UnaryOp> {
        let node = self.node(i);
        if !own_domain(node) || node.output.len() != 1 {
            return None;
        }
        let attr = |name: &str| node.attribute.iter().find(|a| a.name == name);
        if node.op_type == "Clip" {
            let bound = |i: usize, name: &str, default: f32| -> Option<f32> {
                if self.opset < 11 {
                    return Some(attr(name).map_or(default, |a| a.f));
                }
                match node.input.get(i).filter(|n| !n.is_empty()) {
                    None => Some(default),
                    Some(n) => self.scalar(n),
                }
            };
            let (lo, hi) = (
                bound(1, "min", f32::NEG_INFINITY)?,
                bound(2, "max", f32::INFINITY)?,
            );
            return (lo <= hi).then_some(UnaryOp::Clamp(lo, hi));
        }
        if node.input.len() != 1 {
            return None;
        }
        UnaryOp::from_onnx(&node.op_type, |name, default| {
            attr(name).map_or(default, |a| a.f)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ValueInfoProto;
    use kiln::{Device, Tensor};

    fn node(op: &str, inputs: &[&str], output: &str) -> NodeProto {
        NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.to_string()],
            op_type: op.to_string(),
            ..Default::default()
        }
    }

    /// `nodes` after a convolution `Conv(x, w) -> c`, ending in the graph output `y`.
    fn fusions(nodes: Vec<NodeProto>, extra_outputs: &[&str]) -> Fusions {
        let dev = Device::cpu();
        let mut constants = HashMap::new();
        for (name, v) in [
            ("three", 3.0),
            ("zero", 0.0),
            ("six", 6.0),
            ("one", 1.0),
            ("half", 0.5),
            ("root2", std::f32::consts::SQRT_2),
        ] {
            let t = Tensor::from_vec(&dev, vec![v], &[]).unwrap();
            constants.insert(name.to_string(), Value::Float(t));
        }
        let mut graph = GraphProto {
            node: vec![node("Conv", &["x", "w"], "c")],
            ..Default::default()
        };
        graph.node.extend(nodes);
        for o in ["y"].iter().chain(extra_outputs) {
            graph.output.push(ValueInfoProto {
                name: o.to_string(),
                r#type: None,
            });
        }
        find(&graph, &constants, 17, &HashSet::new())
    }

    #[test]
    fn the_activations_exporters_write_are_recognised() {
        let one = fusions(vec![node("Relu", &["c"], "y")], &[]);
        assert_eq!(
            (one[&0].nodes.clone(), one[&0].op),
            (vec![1], UnaryOp::Relu)
        );
        let clip = fusions(vec![node("Clip", &["c", "zero", "six"], "y")], &[]);
        assert_eq!(clip[&0].op, UnaryOp::Clamp(0.0, 6.0));
        let silu = fusions(
            vec![node("Sigmoid", &["c"], "s"), node("Mul", &["s", "c"], "y")],
            &[],
        );
        assert_eq!(
            (silu[&0].nodes.clone(), silu[&0].op),
            (vec![1, 2], UnaryOp::Silu)
        );
        let paddle = vec![
            node("Add", &["c", "three"], "a"),
            node("Clip", &["a", "zero", "six"], "k"),
            node("Mul", &["c", "k"], "m"),
            node("Div", &["m", "six"], "y"),
        ];
        let hs = fusions(paddle.clone(), &[]);
        assert_eq!(
            (hs[&0].nodes.clone(), hs[&0].op),
            (vec![1, 2, 3, 4], UnaryOp::HardSwish)
        );
        let gelu = fusions(
            vec![
                node("Div", &["c", "root2"], "d"),
                node("Erf", &["d"], "e"),
                node("Add", &["e", "one"], "a"),
                node("Mul", &["c", "a"], "m"),
                node("Mul", &["m", "half"], "y"),
            ],
            &[],
        );
        assert_eq!((gelu[&0].nodes.len(), gelu[&0].op), (5, UnaryOp::Gelu));
    }

    #[test]
    fn a_value_read_elsewhere_is_not_fused_away() {
        // The convolution's output is also a graph output; an intermediate is too.
        assert!(fusions(vec![node("Relu", &["c"], "y")], &["c"]).is_empty());
        let paddle = vec![
            node("Add", &["c", "three"], "a"),
            node("Clip", &["a", "zero", "six"], "k"),
            node("Mul", &["c", "k"], "m"),
            node("Div", &["m", "six"], "y"),
        ];
        assert!(fusions(paddle.clone(), &["k"]).is_empty());
        // Another reader of the convolution; a wrong constant; a non-constant bound.
        let mut read_twice = vec![node("Relu", &["c"], "y")];
        read_twice.push(node("Neg", &["c"], "z"));
        assert!(fusions(read_twice, &["z"]).is_empty());
        let mut off = paddle;
        off[3] = node("Div", &["m", "three"], "y");
        assert!(fusions(off, &[]).is_empty());
        assert!(fusions(vec![node("Clip", &["c", "zero", "x"], "y")], &[]).is_empty());
    }
}
