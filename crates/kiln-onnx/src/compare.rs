//! Running one graph on two devices (or two builds of a model) node by node, and finding the
//! first node whose outputs differ: the tool for a kernel that is wrong on one device only.

use super::value::Value;
use kiln::Result;

/// How far two outputs may be apart and still agree: `|want - got| <= abs + rel * |want|`,
/// element by element. NaN agrees only with NaN, an infinity only with the same infinity.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance {
    /// The absolute part.
    pub abs: f64,
    /// The part relative to the reference value.
    pub rel: f64,
}

impl Default for Tolerance {
    /// `1e-4 + 1e-3·|want|`: what kiln's devices keep to on f32 models (the published-model
    /// test's bound).
    fn default() -> Tolerance {
        Tolerance {
            abs: 1e-4,
            rel: 1e-3,
        }
    }
}

/// One output of one node, as two runs made it ([`crate::Model::compare`]).
#[derive(Clone, Debug)]
pub struct NodeDiff {
    /// The node's place in the graph (after the folds done at load).
    pub node: usize,
    /// The node's name (may be empty in the file).
    pub name: String,
    /// Its op type, prefixed with its domain unless that is ONNX's own.
    pub op_type: String,
    /// The output's name.
    pub output: String,
    /// The output's shape in the reference run.
    pub shape: Vec<usize>,
    /// Its shape in the other run (differs only when the runs disagree on it).
    pub other_shape: Vec<usize>,
    /// The largest `|want - got|` (infinite where NaN or infinity disagree).
    pub max_abs: f64,
    /// The element that is furthest outside the tolerance (or furthest apart, when all
    /// agree): its flat index, the reference value and the other.
    pub worst: Option<(usize, f64, f64)>,
    /// How many elements are outside the tolerance (all of them when the shapes differ).
    pub outside: usize,
}

impl NodeDiff {
    /// Whether the two runs agree on this output.
    pub fn agrees(&self) -> bool {
        self.outside == 0 && self.shape == self.other_shape
    }
}

/// Every node output of two runs of one graph, side by side, in the graph's order.
#[derive(Clone, Debug)]
pub struct Comparison {
    /// The reference run's device.
    pub device: String,
    /// The other run's device.
    pub other_device: String,
    /// The tolerance applied.
    pub tolerance: Tolerance,
    /// One entry per node output, in node order.
    pub outputs: Vec<NodeDiff>,
}

impl Comparison {
    /// The first node output the runs disagree on. Nodes run in the graph's order, so every
    /// input of that node agreed: the fault is in that node's kernel (or in how it reads them).
    pub fn first_difference(&self) -> Option<&NodeDiff> {
        self.outputs.iter().find(|d| !d.agrees())
    }
}

impl std::fmt::Display for Comparison {
    /// A table: one line per node output, then the verdict.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} against {} (|want - got| <= {:e} + {:e}·|want|):",
            self.other_device, self.device, self.tolerance.abs, self.tolerance.rel
        )?;
        for d in &self.outputs {
            writeln!(
                f,
                "  {:>5} {:<20} {:<28} {:<24} max |diff| {:>10.3e}{}",
                d.node,
                d.op_type,
                shorten(&d.name),
                shorten(&d.output),
                d.max_abs,
                if d.agrees() { "" } else { "  <- differs" }
            )?;
        }
        match self.first_difference() {
            None => write!(f, "every node output agrees"),
            Some(d) => {
                write!(
                    f,
                    "first difference: node {} `{}` ({}), output `{}`: {} of {} elements outside",
                    d.node,
                    d.name,
                    d.op_type,
                    d.output,
                    d.outside,
                    d.shape.iter().product::<usize>()
                )?;
                if d.shape != d.other_shape {
                    write!(f, "; shape {:?} against {:?}", d.shape, d.other_shape)?;
                }
                if let Some((i, want, got)) = d.worst {
                    write!(f, "; at element {i}: {want} against {got}")?;
                }
                Ok(())
            }
        }
    }
}

fn shorten(s: &str) -> String {
    if s.chars().count() <= 28 {
        s.to_string()
    } else {
        let tail: String = s
            .chars()
            .rev()
            .take(27)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        format!("…{tail}")
    }
}

/// A node output recorded by a traced run: the node's index, qualified op type, name, the
/// output's name and its value (kept alive until the run's end, so nothing is recomputed).
pub(crate) type Traced = (usize, String, String, String, Value);

/// Side by side: `want` and `got` come from the same graph, node for node.
pub(crate) fn diff(want: &[Traced], got: &[Traced], tolerance: Tolerance) -> Result<Vec<NodeDiff>> {
    let mut out = Vec::with_capacity(want.len());
    for ((node, op_type, name, output, w), (_, _, _, _, g)) in want.iter().zip(got) {
        let (wv, gv) = (w.to_f64()?, g.to_f64()?);
        let mut d = NodeDiff {
            node: *node,
            name: name.clone(),
            op_type: op_type.clone(),
            output: output.clone(),
            shape: w.shape().to_vec(),
            other_shape: g.shape().to_vec(),
            max_abs: 0.0,
            worst: None,
            outside: 0,
        };
        if d.shape != d.other_shape {
            d.max_abs = f64::INFINITY;
            d.outside = wv.len();
            out.push(d);
            continue;
        }
        // How far outside the tolerance each element is (negative: inside).
        let mut worst_excess = f64::NEG_INFINITY;
        for (i, (&a, &b)) in wv.iter().zip(&gv).enumerate() {
            let same = a == b || (a.is_nan() && b.is_nan());
            let gap = if same { 0.0 } else { (a - b).abs() };
            let gap = if gap.is_nan() { f64::INFINITY } else { gap };
            let excess = gap - (tolerance.abs + tolerance.rel * a.abs());
            d.max_abs = d.max_abs.max(gap);
            if excess > 0.0 || excess.is_nan() {
                d.outside += 1;
            }
            if excess > worst_excess {
                worst_excess = excess;
                d.worst = Some((i, a, b));
            }
        }
        out.push(d);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IntTensor;

    fn traced(v: Vec<i64>) -> Traced {
        let n = v.len();
        (
            0,
            "Add".into(),
            "n".into(),
            "y".into(),
            Value::Int(IntTensor::new(vec![n], v)),
        )
    }

    #[test]
    fn tolerance_nan_and_shape_decide_agreement() {
        let tol = Tolerance { abs: 0.5, rel: 0.0 };
        let d = diff(&[traced(vec![1, 2, 3])], &[traced(vec![1, 2, 3])], tol).unwrap();
        assert!(d[0].agrees());
        let d = diff(&[traced(vec![1, 2, 3])], &[traced(vec![1, 5, 3])], tol).unwrap();
        assert!(!d[0].agrees());
        assert_eq!((d[0].outside, d[0].max_abs), (1, 3.0));
        assert_eq!(d[0].worst, Some((1, 2.0, 5.0)));
        let d = diff(&[traced(vec![1, 2])], &[traced(vec![1, 2, 3])], tol).unwrap();
        assert!(!d[0].agrees());
        let c = Comparison {
            device: "a".into(),
            other_device: "b".into(),
            tolerance: tol,
            outputs: d,
        };
        assert!(c.to_string().contains("shape [2] against [3]"));
    }
}
