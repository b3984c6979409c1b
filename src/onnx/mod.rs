//! Load and run ONNX models on any kiln device.
//!
//! ```no_run
//! use kiln::{Device, Tensor};
//! use kiln::onnx::{Model, Value};
//!
//! let dev = Device::from_env()?;
//! let model = Model::load("model.onnx".as_ref(), &dev)?;   // initializers uploaded once
//! let x = Tensor::randn(&dev, &[1, 3, 224, 224], 0)?;
//! let outputs = model.run(&[("input", Value::Float(x))])?;  // named outputs, in graph order
//! for (name, value) in &outputs {
//!     println!("{name}: {:?}", value.shape());
//! }
//! # Ok::<(), kiln::Error>(())
//! ```
//!
//! A model is checked when it loads: every op type (and attribute name) it uses must be one kiln
//! implements, or loading fails with one `Error::Unsupported` that lists every missing piece. A
//! malformed or truncated file is `Error::Io`. Float tensors live on the model's device; integer
//! tensors (shapes, indices) live on the host, where ONNX models do their shape arithmetic;
//! booleans are 0/1 float masks on the device. See `supported_ops` for the op list.

mod narrow;
mod ops;
mod proto;
mod value;

pub use value::{IntTensor, Value};

use crate::Device;
use crate::error::{Error, Result};
use proto::{GraphProto, ModelProto, NodeProto};
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// The ONNX op types kiln runs (default domain), sorted.
pub fn supported_ops() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = ops::OPS.iter().map(|o| o.name).collect();
    v.sort_unstable();
    v
}

/// A loaded ONNX model: its graph, its initializers on the device, its opset.
pub struct Model {
    device: Device,
    graph: GraphProto,
    opset: i64,
    /// Initializers (and graph-level constants), uploaded once.
    constants: HashMap<String, Value>,
    /// The graph's inputs that are not initializers, in order.
    inputs: Vec<String>,
    /// Index of the last node that reads each value (to free it after).
    last_use: HashMap<String, usize>,
    /// Element types the graph declares (inputs, outputs, value_info).
    types: HashMap<String, i32>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("graph", &self.graph.name)
            .field("nodes", &self.graph.node.len())
            .field("opset", &self.opset)
            .field("inputs", &self.inputs)
            .finish()
    }
}

impl Model {
    /// Read and check an ONNX file, uploading its initializers to `device`.
    pub fn load(path: &Path, device: &Device) -> Result<Model> {
        let bytes = std::fs::read(path).map_err(|e| Error::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::from_bytes(&bytes, device).map_err(|e| match e {
            Error::Io { reason, .. } => Error::Io {
                path: path.display().to_string(),
                reason,
            },
            other => other,
        })
    }

    /// [`Model::load`] from the file's bytes.
    pub fn from_bytes(bytes: &[u8], device: &Device) -> Result<Model> {
        let model: ModelProto = proto::decode(bytes, "ONNX model")?;
        let graph = model.graph.ok_or_else(|| Error::Io {
            path: "ONNX model".into(),
            reason: "the model has no graph".into(),
        })?;
        let opset = model
            .opset_import
            .iter()
            .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
            .map_or(21, |o| o.version);
        check(&graph)?;
        let mut constants = HashMap::new();
        for t in &graph.initializer {
            constants.insert(t.name.clone(), value::from_proto(t, device)?);
        }
        if let Some(s) = graph.sparse_initializer.first() {
            let name = s.values.as_ref().map_or("?", |v| v.name.as_str());
            return Err(Error::Unsupported {
                op: "onnx",
                reason: format!("sparse initializer `{name}`"),
            });
        }
        let inputs = graph
            .input
            .iter()
            .map(|i| i.name.clone())
            .filter(|n| !constants.contains_key(n))
            .collect();
        let mut last_use = HashMap::new();
        for (i, node) in graph.node.iter().enumerate() {
            for name in node.input.iter().filter(|n| !n.is_empty()) {
                last_use.insert(name.clone(), i);
            }
        }
        for o in &graph.output {
            last_use.insert(o.name.clone(), usize::MAX);
        }
        let types = graph
            .input
            .iter()
            .chain(&graph.output)
            .chain(&graph.value_info)
            .filter_map(|v| {
                let t = v.r#type.as_ref()?.tensor_type.as_ref()?;
                Some((v.name.clone(), t.elem_type))
            })
            .collect();
        log::info!(
            "onnx: loaded graph `{}`: {} nodes, opset {opset}, {} initializers",
            graph.name,
            graph.node.len(),
            constants.len()
        );
        Ok(Model {
            device: device.clone(),
            graph,
            opset,
            constants,
            inputs,
            last_use,
            types,
        })
    }

    /// The names of the inputs a run needs, in the graph's order.
    pub fn inputs(&self) -> &[String] {
        &self.inputs
    }

    /// The names of the graph's outputs, in order.
    pub fn outputs(&self) -> Vec<&str> {
        self.graph.output.iter().map(|o| o.name.as_str()).collect()
    }

    /// The op types the graph uses (its top level), in order of first use.
    pub fn op_types(&self) -> Vec<&str> {
        let mut seen = HashSet::new();
        self.graph
            .node
            .iter()
            .map(|n| n.op_type.as_str())
            .filter(|o| seen.insert(*o))
            .collect()
    }

    /// The device the model runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Run the graph on named inputs (float tensors must be on the model's device), returning
    /// the graph's outputs by name, in its order. A missing input is `Error::InvalidArgument`.
    pub fn run(&self, inputs: &[(&str, Value)]) -> Result<Vec<(String, Value)>> {
        let mut values: HashMap<String, Value> = HashMap::new();
        for (name, v) in inputs {
            if let Value::Float(t) | Value::Bool(t) = v
                && !t.device().same(&self.device)
            {
                return Err(Error::DeviceMismatch {
                    op: "onnx run",
                    lhs: self.device.to_string(),
                    rhs: t.device().to_string(),
                });
            }
            values.insert((*name).to_string(), v.clone());
        }
        for name in &self.inputs {
            if !values.contains_key(name) {
                return Err(Error::InvalidArgument {
                    op: "onnx run",
                    reason: format!("the model's input `{name}` was not given"),
                });
            }
        }
        for (i, node) in self.graph.node.iter().enumerate() {
            let args: Vec<Option<Value>> = node
                .input
                .iter()
                .map(|n| {
                    if n.is_empty() {
                        return Ok(None);
                    }
                    values
                        .get(n)
                        .or_else(|| self.constants.get(n))
                        .cloned()
                        .map(Some)
                        .ok_or_else(|| Error::InvalidArgument {
                            op: "onnx run",
                            reason: format!("node `{}` reads `{n}`, which nothing made", node.name),
                        })
                })
                .collect::<Result<_>>()?;
            let ctx = ops::Ctx {
                dev: &self.device,
                node,
                opset: self.opset,
                types: &self.types,
            };
            let out = ops::run(&ctx, &args)?;
            for (name, v) in node.output.iter().zip(out) {
                if !name.is_empty() {
                    values.insert(name.clone(), v);
                }
            }
            for n in &node.input {
                if self.last_use.get(n) == Some(&i) {
                    values.remove(n);
                }
            }
        }
        self.graph
            .output
            .iter()
            .map(|o| {
                let v = values
                    .get(&o.name)
                    .or_else(|| self.constants.get(&o.name))
                    .cloned()
                    .ok_or_else(|| Error::InvalidArgument {
                        op: "onnx run",
                        reason: format!("the graph's output `{}` was never made", o.name),
                    })?;
                Ok((o.name.clone(), v))
            })
            .collect()
    }
}

/// Every op type and attribute of `graph` (and its subgraphs) that kiln lacks, as one error.
fn check(graph: &GraphProto) -> Result<()> {
    let mut missing: Vec<String> = Vec::new();
    let mut seen = HashSet::new();
    collect_missing(graph, &mut missing, &mut seen);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::Unsupported {
            op: "onnx",
            reason: format!("the model needs what kiln lacks: {}", missing.join("; ")),
        })
    }
}

fn collect_missing(graph: &GraphProto, missing: &mut Vec<String>, seen: &mut HashSet<String>) {
    let mut report = |what: String, missing: &mut Vec<String>| {
        if seen.insert(what.clone()) {
            missing.push(what);
        }
    };
    let mut subgraphs = Vec::new();
    for node in &graph.node {
        if !(node.domain.is_empty() || node.domain == "ai.onnx") {
            report(format!("op {}::{}", node.domain, node.op_type), missing);
            continue;
        }
        let Some(def) = ops::find(&node.op_type) else {
            report(format!("op {}", node.op_type), missing);
            continue;
        };
        for a in &node.attribute {
            if !def.attrs.contains(&a.name.as_str()) {
                report(format!("attribute {}.{}", node.op_type, a.name), missing);
            }
            subgraphs.extend(a.g.as_ref());
        }
    }
    for g in subgraphs {
        collect_missing(g, missing, seen);
    }
}

/// A node's position for messages.
pub(crate) fn describe(node: &NodeProto) -> String {
    if node.name.is_empty() {
        node.op_type.clone()
    } else {
        format!("{} `{}`", node.op_type, node.name)
    }
}

/// Decode one ONNX `TensorProto` file (as ONNX's test data sets store inputs and outputs) into
/// a value on `device`, with its name.
pub fn load_tensor(path: &Path, device: &Device) -> Result<(String, Value)> {
    let bytes = std::fs::read(path).map_err(|e| Error::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let t: proto::TensorProto = proto::decode(&bytes, &path.display().to_string())?;
    Ok((t.name.clone(), value::from_proto(&t, device)?))
}
