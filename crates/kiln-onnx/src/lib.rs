//! Load and run ONNX models on any kiln device.
//!
//! ```no_run
//! use kiln::{Device, Tensor};
//! use kiln_onnx::{Model, Value};
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

mod compare;
mod external;
mod fuse;
mod narrow;
mod ops;
mod proto;
mod simplify;
mod value;

pub use compare::{Comparison, NodeDiff, Tolerance};
pub use value::{IntTensor, Value};

use kiln::Device;
use kiln::{Error, Result};
use proto::{GraphProto, ModelProto, NodeProto};
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// The ONNX op types kiln runs, sorted: ONNX's own by name, the `ai.onnx.ml` ones as
/// `ai.onnx.ml.Name` (as [`Model::op_types`] names them).
pub fn supported_ops() -> Vec<String> {
    let mut v: Vec<String> = ops::OPS
        .iter()
        .map(|o| qualified(o.domain, o.name))
        .collect();
    v.sort_unstable();
    v
}

/// Whether `node` is of ONNX's own domain (empty or `ai.onnx`).
pub(crate) fn own_domain(node: &NodeProto) -> bool {
    is_onnx_domain(&node.domain)
}

fn is_onnx_domain(domain: &str) -> bool {
    domain.is_empty() || domain == "ai.onnx"
}

/// `name`, prefixed with its domain unless that is ONNX's own.
fn qualified(domain: &str, name: &str) -> String {
    if is_onnx_domain(domain) {
        name.to_string()
    } else {
        format!("{domain}.{name}")
    }
}

/// A run's outputs: each graph output's name and value, in the graph's order.
pub type Outputs = Vec<(String, Value)>;

/// Per op type: the nodes run and their total time, longest first ([`Model::run_profiled`]).
pub type Profile = Vec<(String, usize, std::time::Duration)>;

/// A user's implementation of an op type ([`Model::replace_op`]): it gets the model's device
/// and the node's inputs (`None` for an optional input left out) and returns its outputs.
pub type OpImpl =
    std::sync::Arc<dyn Fn(&Device, &[Option<Value>]) -> Result<Vec<Value>> + Send + Sync>;

/// What a run records besides its outputs.
enum Watch<'a> {
    /// Per op type: nodes run and their time (the device synchronized after each node), the
    /// nodes of subgraphs included (shared with their evaluation).
    Profile(&'a std::cell::RefCell<HashMap<String, (usize, std::time::Duration)>>),
    /// Every node output, in node order, kept to the end of the run.
    Trace(&'a mut Vec<compare::Traced>),
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
    /// The op types the file's graph uses, in first-use order (before the folds at load).
    op_types: Vec<String>,
    /// Op types run by the user's code instead of kiln's ([`Model::replace_op`]).
    replaced: HashMap<String, OpImpl>,
    /// Convolutions that run the activation after them (`fuse.rs`), by node index.
    fusions: fuse::Fusions,
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
        let dir = path.parent().unwrap_or(Path::new("."));
        Self::decode(&bytes, Some(dir), device).map_err(|e| match e {
            Error::Io { reason, .. } => Error::Io {
                path: path.display().to_string(),
                reason,
            },
            other => other,
        })
    }

    /// [`Model::load`] from the file's bytes. A model whose initializers keep their data in
    /// external files needs [`Model::load`], which knows the directory they lie in:
    /// here it is `Error::Unsupported`.
    pub fn from_bytes(bytes: &[u8], device: &Device) -> Result<Model> {
        Self::decode(bytes, None, device)
    }

    /// The model in `bytes`; external data files are looked up in `dir`.
    fn decode(bytes: &[u8], dir: Option<&Path>, device: &Device) -> Result<Model> {
        let model: ModelProto = proto::decode(bytes, "ONNX model")?;
        let mut graph = model.graph.ok_or_else(|| Error::Io {
            path: "ONNX model".into(),
            reason: "the model has no graph".into(),
        })?;
        let opset = model
            .opset_import
            .iter()
            .find(|o| is_onnx_domain(&o.domain))
            .map_or(21, |o| o.version);
        check(&graph)?;
        for t in &mut graph.initializer {
            external::inline(t, dir)?;
        }
        let mut constants = HashMap::new();
        for t in &graph.initializer {
            constants.insert(t.name.clone(), value::weight_from_proto(t, device)?);
        }
        let op_types = {
            let mut seen = HashSet::new();
            graph
                .node
                .iter()
                .map(|n| qualified(&n.domain, &n.op_type))
                .filter(|o| seen.insert(o.clone()))
                .collect()
        };
        let made = fold_constants(&mut graph, &mut constants, device, opset, &|_| true)?;
        if made > 0 {
            log::info!("onnx: evaluated {made} Constant nodes once, at load");
        }
        let hoisted = hoist_subgraph_constants(&mut graph, &mut constants, device, opset)?;
        if hoisted > 0 {
            log::info!("onnx: {hoisted} subgraph initializers and Constants made once, at load");
        }
        let computed = fold_constant_nodes(&mut graph, &mut constants, device, opset)?;
        if computed > 0 {
            log::info!("onnx: {computed} nodes of constants computed once, at load");
        }
        let pinned = subgraph_reads(&graph);
        let dropped = simplify::drop_identities(&mut graph, &pinned);
        // Scales and shifts fold into a convolution before and after its batch norm does
        // (a bias exported as its own `Add` before it, a learnable affine after it).
        let mut affine = simplify::fold_affine(&mut graph, &mut constants, &pinned, device)?;
        let folded = fold_batch_norms(&mut graph, &mut constants, device)?;
        if folded > 0 {
            log::info!("onnx: folded {folded} BatchNormalization nodes into their convolutions");
            affine += simplify::fold_affine(&mut graph, &mut constants, &pinned, device)?;
        }
        if dropped + affine > 0 {
            log::info!(
                "onnx: dropped {dropped} Identity nodes, folded {affine} constant scales and shifts into convolutions"
            );
        }
        let fusions = fuse::find(&graph, &constants, opset, &pinned);
        if !fusions.is_empty() {
            log::info!(
                "onnx: {} activations run inside their convolutions",
                fusions.len()
            );
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
            let mut read = Vec::new();
            names_read(node, &mut read);
            for name in read.into_iter().filter(|n| !n.is_empty()) {
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
            op_types,
            replaced: HashMap::new(),
            fusions,
        })
    }

    /// The names of the inputs a run needs, in the graph's order.
    pub fn inputs(&self) -> &[String] {
        &self.inputs
    }

    /// The declared input shapes, in the graph's order: each dimension a number, or `None`
    /// where the model names a symbolic one (a batch size).
    pub fn input_shapes(&self) -> Vec<(String, Vec<Option<usize>>)> {
        self.graph
            .input
            .iter()
            .filter(|i| self.inputs.contains(&i.name))
            .map(|i| {
                let dims = i
                    .r#type
                    .as_ref()
                    .and_then(|t| t.tensor_type.as_ref())
                    .and_then(|t| t.shape.as_ref())
                    .map(|s| {
                        s.dim
                            .iter()
                            .map(|d| d.dim_value.and_then(|v| usize::try_from(v).ok()))
                            .collect()
                    })
                    .unwrap_or_default();
                (i.name.clone(), dims)
            })
            .collect()
    }

    /// The names of the graph's outputs, in order.
    pub fn outputs(&self) -> Vec<&str> {
        self.graph.output.iter().map(|o| o.name.as_str()).collect()
    }

    /// The op types the graph uses (its top level), in order of first use.
    /// Ops of another domain than ONNX's own are prefixed with it (`ai.onnx.ml.Scaler`).
    pub fn op_types(&self) -> Vec<String> {
        self.op_types.clone()
    }

    /// The device the model runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Run the graph on named inputs (float tensors must be on the model's device), returning
    /// the graph's outputs by name, in its order. A missing input is `Error::InvalidArgument`.
    pub fn run(&self, inputs: &[(&str, Value)]) -> Result<Vec<(String, Value)>> {
        self.execute(inputs, None)
    }

    /// [`Model::run`], timing each op type: the device is synchronized after every node, so
    /// the times are per node and the run is slower than `run`. Returns the outputs and, per op
    /// type, the nodes run and their total time, longest first. The nodes of subgraphs (the
    /// branches of an `If`) count under their own types too, so a control-flow node's time
    /// also appears as its subgraph's nodes' times.
    pub fn run_profiled(&self, inputs: &[(&str, Value)]) -> Result<(Outputs, Profile)> {
        let times = std::cell::RefCell::new(HashMap::new());
        let out = self.execute(inputs, Some(&mut Watch::Profile(&times)))?;
        let times: HashMap<String, (usize, std::time::Duration)> = times.into_inner();
        let mut v: Profile = times.into_iter().map(|(k, (n, t))| (k, n, t)).collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.2));
        Ok((out, v))
    }

    /// Run this model and `other` (the same graph: the same file loaded on another device, or
    /// with an op replaced) on the same inputs, keeping every node's outputs, and compare them
    /// node by node against `tolerance`, this model's run being the reference. The inputs are
    /// given on this model's device and copied to the other's. The returned [`Comparison`]
    /// lists every node output and names the first one the runs disagree on
    /// ([`Comparison::first_difference`]): every input of that node agreed, so the fault is
    /// that node's. Both runs are whole runs, their elementwise ops fused as `run` fuses them,
    /// so a fault that shows only inside a fused kernel still shows; the activations `run`
    /// applies inside convolutions (`fuse.rs`) run as their own nodes here, so that each node
    /// has its output checked (the op table checks `conv2d_act` itself on every device).
    /// Every value stays alive until the end and is
    /// read back, so this takes more memory and time than `run`.
    ///
    /// A graph that is not the same, node for node, is `Error::InvalidArgument`.
    pub fn compare(
        &self,
        other: &Model,
        inputs: &[(&str, Value)],
        tolerance: Tolerance,
    ) -> Result<Comparison> {
        let same =
            self.graph.node.len() == other.graph.node.len()
                && self.graph.node.iter().zip(&other.graph.node).all(|(a, b)| {
                    a.op_type == b.op_type && a.name == b.name && a.output == b.output
                });
        if !same {
            return Err(Error::InvalidArgument {
                op: "onnx compare",
                reason: format!(
                    "the models are not the same graph ({} nodes against {})",
                    self.graph.node.len(),
                    other.graph.node.len()
                ),
            });
        }
        let moved: Vec<(&str, Value)> = inputs
            .iter()
            .map(|(n, v)| {
                let v = match v {
                    Value::Float(t) => Value::Float(t.to_device(&other.device)?),
                    Value::Bool(t) => Value::Bool(t.to_device(&other.device)?),
                    Value::Int(i) => Value::Int(i.clone()),
                };
                Ok((*n, v))
            })
            .collect::<Result<_>>()?;
        let (mut want, mut got) = (Vec::new(), Vec::new());
        self.execute(inputs, Some(&mut Watch::Trace(&mut want)))?;
        other.execute(&moved, Some(&mut Watch::Trace(&mut got)))?;
        Ok(Comparison {
            device: self.device.to_string(),
            other_device: other.device.to_string(),
            tolerance,
            outputs: compare::diff(&want, &got, tolerance)?,
        })
    }

    /// Run every node of the ONNX op type `op_type` with `f` instead of kiln's own kernel: to
    /// try an implementation of one's own, or to plant a fault and see [`Model::compare`] find
    /// it. `f` sees the node's inputs, not its attributes. Only op types of ONNX's own domain
    /// that the model can already run are replaced; `f`'s outputs are used as they come.
    pub fn replace_op(&mut self, op_type: &str, f: OpImpl) {
        self.replaced.insert(op_type.to_string(), f);
    }

    fn execute(
        &self,
        inputs: &[(&str, Value)],
        watch: Option<&mut Watch>,
    ) -> Result<Vec<(String, Value)>> {
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
        let constants = |n: &str| self.constants.get(n).cloned();
        self.eval(&self.graph, values, &constants, Some(&self.last_use), watch)
    }

    /// Runs `graph` from `values` (its inputs), reading any other name from `outer` (the
    /// model's initializers, or the enclosing graph's values for a subgraph), and returns
    /// its outputs. With `last_use`, a value is dropped after the last node that reads it.
    fn eval(
        &self,
        graph: &GraphProto,
        mut values: HashMap<String, Value>,
        outer: &dyn Fn(&str) -> Option<Value>,
        last_use: Option<&HashMap<String, usize>>,
        mut watch: Option<&mut Watch>,
    ) -> Result<Vec<(String, Value)>> {
        // Activations run inside their convolutions (`fuse.rs`): in the model's own graph,
        // unless every node's output is being traced (`compare` checks each node) or the user
        // replaced either op.
        let fusing = std::ptr::eq(graph, &self.graph) && !matches!(watch, Some(Watch::Trace(_)));
        let mut done_by_conv: HashSet<usize> = HashSet::new();
        let profile = match watch.as_deref() {
            Some(Watch::Profile(p)) => Some(*p),
            _ => None,
        };
        for (i, node) in graph.node.iter().enumerate() {
            if done_by_conv.contains(&i) {
                continue; // an activation its convolution applied
            }
            let fusion = self.fusions.get(&i).filter(|f| {
                fusing
                    && !self.replaced.contains_key(&node.op_type)
                    && !f
                        .nodes
                        .iter()
                        .any(|&a| self.replaced.contains_key(&graph.node[a].op_type))
            });
            let lookup = |n: &str| values.get(n).cloned().or_else(|| outer(n));
            let args: Vec<Option<Value>> = node
                .input
                .iter()
                .map(|n| {
                    if n.is_empty() {
                        return Ok(None);
                    }
                    lookup(n).map(Some).ok_or_else(|| Error::InvalidArgument {
                        op: "onnx run",
                        reason: format!("node `{}` reads `{n}`, which nothing made", node.name),
                    })
                })
                .collect::<Result<_>>()?;
            // A subgraph (an `If` branch) sees this graph's values as its outer scope.
            let subgraph = |g: &GraphProto| -> Result<Vec<Value>> {
                let mut own = HashMap::new();
                for t in &g.initializer {
                    own.insert(t.name.clone(), value::weight_from_proto(t, &self.device)?);
                }
                let mut watch = profile.map(Watch::Profile);
                let out = self.eval(g, own, &lookup, None, watch.as_mut())?;
                Ok(out.into_iter().map(|(_, v)| v).collect())
            };
            let ctx = ops::Ctx {
                dev: &self.device,
                node,
                opset: self.opset,
                types: &self.types,
                subgraph: &subgraph,
                activation: fusion.map(|f| f.op),
            };
            let start = web_time::Instant::now();
            let own_domain = own_domain(node);
            let out = match self.replaced.get(&node.op_type) {
                Some(f) if own_domain => f(&self.device, &args)?,
                _ => ops::run(&ctx, &args)?,
            };
            match watch.as_deref_mut() {
                Some(Watch::Profile(p)) => {
                    self.device.synchronize()?;
                    let took = start.elapsed();
                    log::debug!(
                        "onnx profile: node {i} {} `{}` {:?} -> {:?}: {took:.2?}",
                        node.op_type,
                        node.name,
                        args.iter().flatten().map(Value::shape).collect::<Vec<_>>(),
                        out.iter().map(Value::shape).collect::<Vec<_>>(),
                    );
                    let mut p = p.borrow_mut();
                    let e = p.entry(node.op_type.clone()).or_default();
                    e.0 += 1;
                    e.1 += took;
                }
                Some(Watch::Trace(t)) => {
                    for (name, v) in node.output.iter().zip(&out) {
                        if !name.is_empty() {
                            let op = qualified(&node.domain, &node.op_type);
                            t.push((i, op, node.name.clone(), name.clone(), v.clone()));
                        }
                    }
                }
                None => {}
            }
            let names = match fusion {
                Some(f) => {
                    done_by_conv.extend(&f.nodes);
                    let last = f.nodes.last().expect("a fusion stands in for some node");
                    &graph.node[*last].output
                }
                None => &node.output,
            };
            for (name, v) in names.iter().zip(out) {
                if !name.is_empty() {
                    values.insert(name.clone(), v);
                }
            }
            if let Some(last_use) = last_use {
                for n in &node.input {
                    if last_use.get(n) == Some(&i) {
                        values.remove(n);
                    }
                }
            }
        }
        graph
            .output
            .iter()
            .map(|o| {
                let v = values
                    .get(&o.name)
                    .cloned()
                    .or_else(|| outer(&o.name))
                    .ok_or_else(|| Error::InvalidArgument {
                        op: "onnx run",
                        reason: format!("the graph's output `{}` was never made", o.name),
                    })?;
                Ok((o.name.clone(), v))
            })
            .collect()
    }
}

/// `node` computed at load from `args` (constants): no subgraph, no value types, no fused
/// activation.
fn run_at_load(
    node: &NodeProto,
    device: &Device,
    opset: i64,
    args: &[Option<Value>],
) -> Result<Vec<Value>> {
    let no_subgraph = |_: &GraphProto| -> Result<Vec<Value>> {
        Err(Error::Unsupported {
            op: "onnx",
            reason: "a subgraph while computing constants at load".into(),
        })
    };
    let ctx = ops::Ctx {
        dev: device,
        node,
        opset,
        types: &HashMap::new(),
        subgraph: &no_subgraph,
        activation: None,
    };
    ops::run(&ctx, args)
}

/// Evaluate each `Constant` node of the graph once, at load: its value joins the initializers
/// (made and uploaded once instead of at every run) and the node leaves the graph, so the
/// folds after this one see it as an initializer. Returns how many were evaluated.
fn fold_constants(
    graph: &mut GraphProto,
    constants: &mut HashMap<String, Value>,
    device: &Device,
    opset: i64,
    may_hoist: &dyn Fn(&str) -> bool,
) -> Result<usize> {
    let mut kept = Vec::with_capacity(graph.node.len());
    let mut made = 0;
    for node in std::mem::take(&mut graph.node) {
        let own_domain = own_domain(&node);
        if node.op_type != "Constant"
            || !own_domain
            || !node.input.is_empty()
            || !node.output.iter().all(|o| may_hoist(o))
        {
            kept.push(node);
            continue;
        }
        for (name, v) in node
            .output
            .iter()
            .zip(run_at_load(&node, device, opset, &[])?)
        {
            if !name.is_empty() {
                constants.insert(name.clone(), v);
            }
        }
        made += 1;
    }
    graph.node = kept;
    Ok(made)
}

/// Ops never computed at load: their values change between runs (random draws) or they run
/// subgraphs.
const NOT_FOLDED: &[&str] = &[
    "RandomNormal",
    "RandomUniform",
    "RandomNormalLike",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
    "Dropout",
    "If",
    "Loop",
    "Scan",
];

/// Compute once, at load, every node whose inputs are all constants (initializers, folded
/// `Constant`s, or outputs of nodes computed before it): exporters leave weight arithmetic in
/// the graph (an LSTM's gates sliced and concatenated into ONNX's order, a weight transposed or
/// reshaped), which would otherwise run at every run. Nodes of the model's graph and of its
/// subgraphs (whose output names nothing else defines) are computed, in order. Not computed:
/// ops of [`NOT_FOLDED`], other domains' ops, nodes reading an initializer that is also a graph
/// input (the caller may feed another value), results much larger than their inputs (more than
/// 4× their values and 64 Ki values: memory kept for a fill), and any node whose computation
/// fails here (it stays in the graph and reports at run time). Returns how many were computed.
fn fold_constant_nodes(
    graph: &mut GraphProto,
    constants: &mut HashMap<String, Value>,
    device: &Device,
    opset: i64,
) -> Result<usize> {
    fn numel(v: &Value) -> usize {
        v.shape().iter().product()
    }
    #[allow(clippy::too_many_arguments)]
    fn fold(
        g: &mut GraphProto,
        constants: &mut HashMap<String, Value>,
        fed: &HashSet<String>,
        may_define: &dyn Fn(&str) -> bool,
        device: &Device,
        opset: i64,
        once: &HashSet<String>,
    ) -> usize {
        let mut made = 0;
        let mut kept = Vec::with_capacity(g.node.len());
        for mut node in std::mem::take(&mut g.node) {
            for sub in node.attribute.iter_mut().filter_map(|a| a.g.as_mut()) {
                let unique = |n: &str| once.contains(n);
                made += fold(sub, constants, fed, &unique, device, opset, once);
            }
            let args: Option<Vec<Option<Value>>> = node
                .input
                .iter()
                .map(|n| match n.is_empty() {
                    true => Some(None),
                    false if fed.contains(n) => None,
                    false => constants.get(n).cloned().map(Some),
                })
                .collect();
            let foldable = own_domain(&node)
                && !NOT_FOLDED.contains(&node.op_type.as_str())
                && !node.input.is_empty()
                && node.attribute.iter().all(|a| a.g.is_none())
                && node.output.iter().all(|o| o.is_empty() || may_define(o));
            let Some(args) = args.filter(|_| foldable) else {
                kept.push(node);
                continue;
            };
            let out = match run_at_load(&node, device, opset, &args) {
                Ok(out) => out,
                Err(e) => {
                    log::debug!(
                        "onnx: {} `{}` stays in the graph: {e}",
                        node.op_type,
                        node.name
                    );
                    kept.push(node);
                    continue;
                }
            };
            let read: usize = args.iter().flatten().map(numel).sum();
            let made_values: usize = out.iter().map(numel).sum();
            if made_values > 4 * read && made_values > 1 << 16 {
                kept.push(node);
                continue;
            }
            for (name, v) in node.output.iter().zip(out) {
                if !name.is_empty() {
                    constants.insert(name.clone(), v);
                }
            }
            made += 1;
        }
        g.node = kept;
        made
    }
    let fed: HashSet<String> = graph
        .input
        .iter()
        .map(|i| i.name.clone())
        .filter(|n| constants.contains_key(n))
        .collect();
    let once = defined_once(graph);
    Ok(fold(
        graph,
        constants,
        &fed,
        &|_| true,
        device,
        opset,
        &once,
    ))
}

/// Names that the model (its graph and subgraphs) defines exactly once: as a node output, a
/// graph input or an initializer.
fn defined_once(graph: &GraphProto) -> HashSet<String> {
    fn count<'g>(g: &'g GraphProto, into: &mut HashMap<&'g str, usize>) {
        let names = g.node.iter().flat_map(|n| n.output.iter());
        let names = names.chain(g.input.iter().map(|i| &i.name));
        for name in names.chain(g.initializer.iter().map(|t| &t.name)) {
            *into.entry(name.as_str()).or_default() += 1;
        }
        for sub in g
            .node
            .iter()
            .flat_map(|n| n.attribute.iter().filter_map(|a| a.g.as_ref()))
        {
            count(sub, into);
        }
    }
    let mut counts = HashMap::new();
    count(graph, &mut counts);
    counts
        .into_iter()
        .filter(|&(_, c)| c == 1)
        .map(|(n, _)| n.to_string())
        .collect()
}

/// Fold each inference BatchNormalization whose input is a Conv's or ConvTranspose's output
/// read by nothing else into that convolution's weight and bias (all of them initializers):
/// `w' = w·s` and `b' = (b - mean)·s + B`, with `s = scale / sqrt(var + eps)` per output
/// channel (a Conv weight's first axis; a ConvTranspose weight's second, per group). One op
/// less per pair, and no elementwise pass over the activation. Returns how many were folded.
fn fold_batch_norms(
    graph: &mut GraphProto,
    constants: &mut HashMap<String, Value>,
    device: &Device,
) -> Result<usize> {
    let mut readers: HashMap<String, usize> = HashMap::new();
    for n in &graph.node {
        for i in n.input.iter().filter(|i| !i.is_empty()) {
            *readers.entry(i.clone()).or_default() += 1;
        }
    }
    for o in &graph.output {
        *readers.entry(o.name.clone()).or_default() += 1;
    }
    fn host(constants: &HashMap<String, Value>, name: &str) -> Option<Vec<f64>> {
        match constants.get(name) {
            Some(v @ Value::Float(_)) => v.to_f64().ok(),
            _ => None,
        }
    }
    let mut folded = 0;
    let mut removed = HashSet::new();
    for b in 0..graph.node.len() {
        let bn = &graph.node[b];
        if bn.op_type != "BatchNormalization"
            || bn.input.len() != 5
            || bn.output.len() != 1
            || bn
                .attribute
                .iter()
                .any(|a| a.name == "training_mode" && a.i != 0)
        {
            continue;
        }
        let Some(c) = graph.node.iter().position(|n| {
            matches!(n.op_type.as_str(), "Conv" | "ConvTranspose")
                && n.output.first() == Some(&bn.input[0])
        }) else {
            continue;
        };
        if readers.get(&bn.input[0]) != Some(&1) {
            continue;
        }
        let conv = &graph.node[c];
        let (Some(w), Some(scale), Some(shift), Some(mean), Some(var)) = (
            host(constants, &conv.input[1]),
            host(constants, &bn.input[1]),
            host(constants, &bn.input[2]),
            host(constants, &bn.input[3]),
            host(constants, &bn.input[4]),
        ) else {
            continue;
        };
        let c_out = scale.len();
        let dims = constants[&conv.input[1]].shape().to_vec();
        let Some(channels) = simplify::OutChannels::new(conv, &dims) else {
            continue;
        };
        if channels.count != c_out || [&shift, &mean, &var].iter().any(|v| v.len() != c_out) {
            continue;
        }
        let bias = match conv.input.get(2).filter(|n| !n.is_empty()) {
            Some(n) => match host(constants, n) {
                Some(v) if v.len() == c_out => v,
                _ => continue,
            },
            None => vec![0.0; c_out],
        };
        let eps = bn
            .attribute
            .iter()
            .find(|a| a.name == "epsilon")
            .map_or(1e-5, |a| f64::from(a.f));
        let s: Vec<f64> = (0..c_out)
            .map(|k| scale[k] / (var[k] + eps).sqrt())
            .collect();
        let new_w: Vec<f32> = w
            .iter()
            .enumerate()
            .map(|(i, &v)| (v * s[channels.of(i)]) as f32)
            .collect();
        let new_b: Vec<f32> = (0..c_out)
            .map(|k| ((bias[k] - mean[k]) * s[k] + shift[k]) as f32)
            .collect();
        let (wn, bname) = (
            format!("{}.kiln_folded_w", bn.output[0]),
            format!("{}.kiln_folded_b", bn.output[0]),
        );
        constants.insert(
            wn.clone(),
            Value::Float(kiln::Tensor::from_vec(device, new_w, &dims)?),
        );
        constants.insert(
            bname.clone(),
            Value::Float(kiln::Tensor::from_vec(device, new_b, &[c_out])?),
        );
        let out = bn.output[0].clone();
        let conv = &mut graph.node[c];
        conv.input.truncate(2);
        conv.input[1] = wn;
        conv.input.push(bname);
        conv.output[0] = out;
        removed.insert(b);
        folded += 1;
    }
    let mut k = 0;
    graph.node.retain(|_| {
        k += 1;
        !removed.contains(&(k - 1))
    });
    Ok(folded)
}

/// Make the initializers and `Constant` nodes of every subgraph (the branches of an `If`,
/// which in some models hold all the weights) once, at load, with the graph's own initializers,
/// instead of at every run of the branch. Only names that nothing else in the model defines
/// move (ONNX names are unique across a graph and its subgraphs, but a file may not keep to
/// that: a name that is defined twice stays where it is and is made per run as before).
/// Returns how many values moved.
fn hoist_subgraph_constants(
    graph: &mut GraphProto,
    constants: &mut HashMap<String, Value>,
    device: &Device,
    opset: i64,
) -> Result<usize> {
    fn hoist(
        g: &mut GraphProto,
        constants: &mut HashMap<String, Value>,
        once: &HashSet<String>,
        device: &Device,
        opset: i64,
    ) -> Result<usize> {
        let mut moved = 0;
        for node in &mut g.node {
            for sub in node.attribute.iter_mut().filter_map(|a| a.g.as_mut()) {
                let unique = |n: &str| once.contains(n);
                moved += fold_constants(sub, constants, device, opset, &unique)?;
                let mut kept = Vec::new();
                for t in std::mem::take(&mut sub.initializer) {
                    if once.contains(&t.name) && !constants.contains_key(&t.name) {
                        constants.insert(t.name.clone(), value::weight_from_proto(&t, device)?);
                        moved += 1;
                    } else {
                        kept.push(t);
                    }
                }
                sub.initializer = kept;
                moved += hoist(sub, constants, once, device, opset)?;
            }
        }
        Ok(moved)
    }
    let mut once = defined_once(graph);
    once.retain(|n| !constants.contains_key(n));
    hoist(graph, constants, &once, device, opset)
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
        let Some(def) = ops::find(&node.domain, &node.op_type) else {
            report(
                format!("op {}", qualified(&node.domain, &node.op_type)),
                missing,
            );
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

/// The names `node` reads: its inputs and, for a node with subgraphs (an `If`), every name
/// their nodes read (some come from the enclosing graph).
fn names_read<'g>(node: &'g NodeProto, out: &mut Vec<&'g String>) {
    out.extend(&node.input);
    for g in node.attribute.iter().filter_map(|a| a.g.as_ref()) {
        for n in &g.node {
            names_read(n, out);
        }
        out.extend(g.output.iter().map(|o| &o.name));
    }
}

/// The names the subgraphs of `graph`'s nodes (`If` branches, loop bodies) read: values of
/// `graph` the load-time rewrites must keep.
fn subgraph_reads(graph: &GraphProto) -> HashSet<String> {
    let mut out = HashSet::new();
    for node in &graph.node {
        for g in node.attribute.iter().filter_map(|a| a.g.as_ref()) {
            for n in &g.node {
                let mut read = Vec::new();
                names_read(n, &mut read);
                out.extend(read.into_iter().cloned());
            }
            out.extend(g.output.iter().map(|o| o.name.clone()));
        }
    }
    out
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
    tensor_from_bytes(&bytes, &path.display().to_string(), device)
}

/// [`load_tensor`] from the file's bytes (`what` names them in errors).
pub fn tensor_from_bytes(bytes: &[u8], what: &str, device: &Device) -> Result<(String, Value)> {
    let t: proto::TensorProto = proto::decode(bytes, what)?;
    Ok((t.name.clone(), value::from_proto(&t, device)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ValueInfoProto;
    use crate::value::IntTensor;
    use kiln::Tensor;

    fn node(op: &str, inputs: &[&str], output: &str) -> NodeProto {
        NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.to_string()],
            op_type: op.to_string(),
            ..Default::default()
        }
    }

    fn info(name: &str) -> ValueInfoProto {
        ValueInfoProto {
            name: name.to_string(),
            r#type: None,
        }
    }

    /// Nodes of constants are computed at load, in order and inside a subgraph; a node reading
    /// a graph input, an initializer the caller may feed instead, a random op, or making far
    /// more values than it reads stays in the graph.
    #[test]
    fn nodes_of_constants_are_computed_once() {
        let dev = Device::cpu();
        let mut constants = HashMap::new();
        let f = |v: Vec<f32>, s: &[usize]| Value::Float(Tensor::from_vec(&dev, v, s).unwrap());
        constants.insert("w".to_string(), f(vec![-1.0, 2.0, -3.0, 4.0], &[2, 2]));
        constants.insert("b".to_string(), f(vec![0.5, 0.5], &[2]));
        constants.insert("one".to_string(), f(vec![1.0], &[1]));
        let big = IntTensor::new(vec![2], vec![512, 512]);
        constants.insert("big".to_string(), Value::Int(big));
        // The branches define distinct names (a name both define is computed per run).
        let branch = |out: &str| GraphProto {
            node: vec![node("Neg", &["t"], out)],
            output: vec![info(out)],
            ..Default::default()
        };
        let mut if_node = node("If", &["cond"], "z");
        if_node.attribute.push(proto::AttributeProto {
            name: "then_branch".into(),
            g: Some(branch("n")),
            ..Default::default()
        });
        if_node.attribute.push(proto::AttributeProto {
            name: "else_branch".into(),
            g: Some(branch("m")),
            ..Default::default()
        });
        let mut random = node("RandomNormalLike", &["w"], "noise");
        random.attribute.push(proto::AttributeProto {
            name: "seed".into(),
            f: 1.0,
            ..Default::default()
        });
        let mut graph = GraphProto {
            node: vec![
                node("Relu", &["w"], "r"),
                node("Transpose", &["r"], "t"),
                node("Add", &["t", "b"], "fed"),
                node("Mul", &["x", "t"], "y"),
                random,
                node("Expand", &["one", "big"], "wide"),
                if_node,
            ],
            input: vec![info("x"), info("b"), info("cond")],
            output: vec![info("y"), info("fed"), info("z")],
            ..Default::default()
        };
        let made = fold_constant_nodes(&mut graph, &mut constants, &dev, 17).unwrap();
        assert_eq!(made, 4, "Relu, Transpose and each branch's Neg");
        let left: Vec<&str> = graph.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(left, ["Add", "Mul", "RandomNormalLike", "Expand", "If"]);
        let t = match &constants["t"] {
            Value::Float(t) => t.to_vec().unwrap(),
            _ => panic!("t is a float tensor"),
        };
        assert_eq!(t, [0.0, 0.0, 2.0, 4.0]);
        let n = match &constants["n"] {
            Value::Float(t) => t.to_vec().unwrap(),
            _ => panic!("n is a float tensor"),
        };
        assert_eq!(n, [-0.0, -0.0, -2.0, -4.0]);
    }
}
