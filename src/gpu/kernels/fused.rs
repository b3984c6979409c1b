//! Fused elementwise programs (`crate::fusion`) on the GPU: each becomes one generated kernel.
//!
//! On a GPU device with fusion on (the default; `KILN_FUSION=0` or [`set_enabled`] turns it
//! off), an elementwise op does not dispatch: its result is a [`Fused`] program over the
//! buffers it reads. A program runs (one dispatch) when its value is needed: a non-elementwise
//! op binds it, it is read back, or [`materialize_pending`] runs at `Device::synchronize`. A
//! reduction or softmax of an unrun program takes it as its prologue instead ([`Fused::reduce`],
//! [`Fused::softmax`]).
//!
//! The kernel is generated WGSL: one load per leaf (contiguous, a broadcast scalar, or strided
//! through its own dimensions and strides), then each op through the registry's function for it
//! (`unary_relu`, `binary_add`, ...: what `activate` and `binary_op` dispatch to), so a fused op
//! computes exactly what the op's own kernel does. Kernels are cached by structure (the
//! generated source); parameters (scalars, shapes, strides) travel in the uniform, so a new
//! shape or learning rate compiles nothing.

use super::Family;
use super::reduce::{self, ReduceParams};
use crate::error::Result;
use crate::fusion::{Inst, LeafMap, MAX_INSTS, MAX_LEAVES, MAX_RANK, Operand, Pending, Program};
use crate::gpu::context::{GpuContext, WG_1D};
use crate::gpu::pipelines::{KernelSpec, Shader};
use crate::gpu::pool::PooledBuffer;
use crate::op::{BinaryOp, ReduceOp, UnaryOp};
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// Words of metadata the uniform holds (the WGSL `words` array: 64 vec4). The caps of
/// `crate::fusion` bound what a program needs: per strided leaf 2 + 2 · rank (its rank,
/// dimensions, strides and offset), per unary op 2, so at most
/// `MAX_LEAVES · (2 + 2 · MAX_RANK) + 2 · MAX_INSTS` = 204 words.
const META_WORDS: usize = 256;
const _: () = assert!(MAX_LEAVES * (2 + 2 * MAX_RANK) + 2 * MAX_INSTS <= META_WORDS);
/// Bytes of a generated kernel's uniform: four header words and the metadata.
/// Words of the uniform before the metadata: the kernel's own parameters (`ReduceParams` for
/// the reductions).
const HEADER_WORDS: usize = 8;
const _: () = assert!(size_of::<ReduceParams>() == 4 * HEADER_WORDS);
const UNIFORM_BYTES: usize = size_of::<[u32; HEADER_WORDS + META_WORDS]>();

/// A program over GPU buffers.
pub(crate) type Fused = Program<Arc<PooledBuffer>>;

/// `op(x)` over `n` values, as a program of this device (run later).
pub(crate) fn unary(
    ctx: &GpuContext,
    x: Operand<Arc<PooledBuffer>>,
    op: UnaryOp,
    n: usize,
) -> Arc<Fused> {
    pending(ctx, Program::unary(x, op, n))
}

/// `x op y` over `n` values, as a program of this device (run later).
pub(crate) fn binary(
    ctx: &GpuContext,
    x: Operand<Arc<PooledBuffer>>,
    y: Operand<Arc<PooledBuffer>>,
    op: BinaryOp,
    n: usize,
) -> Arc<Fused> {
    pending(ctx, Program::binary(x, y, op, n))
}

/// `x` read through its map into `n` values (a repeated value, a view), as a program of this
/// device (run later).
pub(crate) fn read(ctx: &GpuContext, x: Operand<Arc<PooledBuffer>>, n: usize) -> Arc<Fused> {
    pending(ctx, Program::read(x, n))
}

impl Fused {
    /// The program's buffer, running it (one dispatch) on first use.
    pub(crate) fn materialized(&self, ctx: &GpuContext) -> Result<&Arc<PooledBuffer>> {
        if let Some(b) = self.done.get() {
            return Ok(b);
        }
        let out = Arc::new(self.run(ctx)?);
        Ok(self.done.get_or_init(|| out))
    }

    /// `op` along the middle of `dims` over the program's values, without materialising them:
    /// one kernel whose prologue is the program (`len > 0`, `outer * inner > 0`).
    pub(crate) fn reduce(
        &self,
        ctx: &GpuContext,
        dims: (usize, usize, usize),
        op: ReduceOp,
    ) -> Result<PooledBuffer> {
        ctx.check_walk(op.name(), reduce::reduce_walk(dims.1) * self.value_walk())?;
        reduce::chunked(ctx, dims, op, dims.1, &|params, op, n| {
            let constant = ("OP", f64::from(op.shader_id()));
            self.run_reduce_entry(ctx, "reduce", op.name(), constant, params, n)
        })
    }

    /// Loop iterations one read of the program's value costs inside a generated kernel: the
    /// read itself, and for each load of a strided leaf the loop that unravels the index (its
    /// rank, plus the check that ends it: a bias broadcast over `[20, 6625]` ran out of
    /// llvmpipe's budget after four iterations per step, not three). A reduction or softmax
    /// walking an axis through the program pays this on every step, and llvmpipe's loop limit
    /// counts every one.
    pub(crate) fn value_walk(&self) -> usize {
        let load = |inst: &Inst| match inst {
            Inst::Load(leaf) => match &self.leaves[*leaf].1 {
                LeafMap::Strided { dims, .. } => dims.len() + 1,
                _ => 0,
            },
            _ => 0,
        };
        1 + self.insts.iter().map(load).sum::<usize>()
    }

    /// (log-)softmax along the middle of `dims` over the program's values, in one kernel whose
    /// prologue is the program (all extents > 0).
    pub(crate) fn softmax(
        &self,
        ctx: &GpuContext,
        dims: (usize, usize, usize),
        log: bool,
    ) -> Result<PooledBuffer> {
        let name = if log { "log_softmax" } else { "softmax" };
        let constant = ("LOG", f64::from(u8::from(log)));
        ctx.check_walk(name, reduce::softmax_walk(dims.1) * self.value_walk())?;
        let params = ReduceParams::whole(dims);
        self.run_reduce_entry(
            ctx,
            "softmax",
            name,
            constant,
            params,
            dims.0 * dims.1 * dims.2,
        )
    }

    /// Dispatch `entry` of `reduce.wgsl` over the program's values (`params.n_out`
    /// invocations) with its op constant, into a new buffer of `out_n` values.
    fn run_reduce_entry(
        &self,
        ctx: &GpuContext,
        entry: &'static str,
        name: &'static str,
        constant: (&'static str, f64),
        params: ReduceParams,
        out_n: usize,
    ) -> Result<PooledBuffer> {
        let maps: Vec<&LeafMap> = self.leaves.iter().map(|(_, m)| m).collect();
        let (wgsl, meta) = generate_reduce(&self.insts, &maps, entry);
        let spec = KernelSpec {
            shader: intern(wgsl, || self.describe(&format!("{name} of "))),
            entry,
            constants: vec![constant, ("WG", f64::from(WG_1D))],
            unchecked: false,
        };
        let header: [u32; HEADER_WORDS] = bytemuck::cast(params);
        let threads = params.n_out as usize;
        self.launch(ctx, name, &spec, out_n, header, &meta, threads)
    }

    /// Dispatch `spec` over the program's leaves into a new buffer of `out_n` values, with the
    /// uniform `header` followed by the program's metadata, `threads` invocations; the kernel
    /// is counted in the device's stats.
    #[allow(clippy::too_many_arguments)]
    fn launch(
        &self,
        ctx: &GpuContext,
        name: &'static str,
        spec: &KernelSpec,
        out_n: usize,
        header: [u32; HEADER_WORDS],
        meta: &[u32],
        threads: usize,
    ) -> Result<PooledBuffer> {
        let out = ctx.alloc(name, out_n)?;
        let mut buffers: Vec<&wgpu::Buffer> = self.leaves.iter().map(|(b, _)| &b.buffer).collect();
        buffers.push(&out.buffer);
        let params = uniform(header, meta);
        ctx.dispatch_1d(name, spec, &buffers, bytemuck::cast_slice(&params), threads)?;
        self.count(ctx);
        Ok(out)
    }

    /// Count one fused kernel and the program's ops in the device's stats.
    fn count(&self, ctx: &GpuContext) {
        let ops = self.ops();
        let stats = ctx.state(FusionState::new);
        stats.kernels.fetch_add(1, Ordering::Relaxed);
        stats.ops.fetch_add(ops as u64, Ordering::Relaxed);
    }

    fn run(&self, ctx: &GpuContext) -> Result<PooledBuffer> {
        let maps: Vec<&LeafMap> = self.leaves.iter().map(|(_, m)| m).collect();
        let vec4 =
            self.n.is_multiple_of(4) && maps.iter().all(|m| !matches!(m, LeafMap::Strided { .. }));
        let threads = if vec4 { self.n / 4 } else { self.n };
        let (wgsl, meta) = generate(&self.insts, &maps, vec4);
        let spec = KernelSpec {
            shader: intern(wgsl, || self.describe(if vec4 { "vec4 " } else { "" })),
            entry: "main",
            constants: vec![("WG", f64::from(WG_1D))],
            unchecked: false,
        };
        let mut header = [0u32; HEADER_WORDS];
        header[0] = threads as u32;
        self.launch(
            ctx,
            "fused elementwise",
            &spec,
            self.n,
            header,
            &meta,
            threads,
        )
    }
}

/// The declarations every generated kernel starts with: the leaves' bindings, the output, the
/// uniform (`header` words, then 64 vec4 of metadata), and the metadata and strided-index
/// helpers. With `vec4`, contiguous leaves and the output are bound as `array<vec4<f32>>`.
fn declarations(maps: &[&LeafMap], vec4: bool, header: &str) -> String {
    let mut s = String::from("// generated by src/gpu/kernels/fused.rs\n");
    let l = maps.len();
    let elem = |map: &LeafMap| match map {
        LeafMap::Contiguous if vec4 => "vec4<f32>",
        _ => "f32",
    };
    for (k, map) in maps.iter().enumerate() {
        writeln!(
            s,
            "@group(0) @binding({k}) var<storage, read> x{k}: array<{}>;",
            elem(map)
        )
        .unwrap();
    }
    writeln!(
        s,
        "@group(0) @binding({l}) var<storage, read_write> y: array<{}>;",
        elem(&LeafMap::Contiguous)
    )
    .unwrap();
    writeln!(s, "@group(0) @binding({}) var<uniform> p: Params;", l + 1).unwrap();
    writeln!(
        s,
        "struct Params {{\n{header}    words: array<vec4<u32>, 64>,\n}}\n"
    )
    .unwrap();
    s.push_str(
        "// Word k of the metadata (uniform arrays have a 16-byte element stride).\n\
         fn fmeta(k: u32) -> u32 {\n    return p.words[k / 4u][k % 4u];\n}\n\n\
         override WG: u32 = 256u;\n\n\
         // Element offset of flat index i for the strided leaf whose rank is at fmeta(at).\n\
         fn strided(i: u32, at: u32) -> u32 {\n    \
         let rank = fmeta(at);\n    var rem = i;\n    var idx = fmeta(at + 2u * rank + 1u);\n    \
         for (var d = rank; d > 0u; d = d - 1u) {\n        \
         let dim = fmeta(at + d);\n        \
         idx = idx + (rem % dim) * fmeta(at + rank + d);\n        \
         rem = rem / dim;\n    }\n    return idx;\n}\n\n",
    );
    s
}

/// The program's statements for the flat index `i`: `let vK = ...;` for each instruction, its
/// metadata words appended to `meta` (per strided leaf its rank, dimensions, strides and offset; per
/// unary op its two parameters as f32 bits). With `vec4`, each value is four lanes.
fn statements(insts: &[Inst], maps: &[&LeafMap], vec4: bool, meta: &mut Vec<u32>) -> String {
    let mut s = String::new();
    // `f` applied to each lane of a vec4 value, or to the scalar.
    let lanes = |f: &dyn Fn(&str) -> String| -> String {
        if vec4 {
            let c: Vec<String> = ["x", "y", "z", "w"].iter().map(|c| f(c)).collect();
            format!("vec4({})", c.join(", "))
        } else {
            f("")
        }
    };
    let lane = |v: usize, c: &str| {
        if c.is_empty() {
            format!("v{v}")
        } else {
            format!("v{v}.{c}")
        }
    };
    for (v, inst) in insts.iter().enumerate() {
        let expr = match *inst {
            Inst::Load(leaf) => match maps[leaf] {
                LeafMap::Contiguous => format!("x{leaf}[i]"),
                LeafMap::Scalar if vec4 => format!("vec4(x{leaf}[0])"),
                LeafMap::Scalar => format!("x{leaf}[0]"),
                LeafMap::Strided {
                    dims,
                    strides,
                    offset,
                } => {
                    let at = meta.len();
                    meta.push(dims.len() as u32);
                    meta.extend(dims.iter().map(|&d| d as u32));
                    meta.extend(strides.iter().map(|&d| d as u32));
                    meta.push(*offset as u32);
                    format!("x{leaf}[strided(i, {at}u)]")
                }
            },
            Inst::Unary(op, x) => {
                let at = meta.len();
                let (alpha, beta) = op.params();
                meta.extend([alpha.to_bits(), beta.to_bits()]);
                // `activate` with its selector resolved: the op's own function (small enough
                // to inline), NaN passed through as `activate` does.
                lanes(&|c| {
                    let x = lane(x, c);
                    format!(
                        "select(unary_{}({x}, bitcast<f32>(fmeta({at}u)), bitcast<f32>(fmeta({}u))), {x}, is_nan({x}))",
                        op.name(),
                        at + 1
                    )
                })
            }
            Inst::Binary(op, a, b) => {
                lanes(&|c| format!("binary_{}({}, {})", op.name(), lane(a, c), lane(b, c)))
            }
        };
        writeln!(s, "    let v{v} = {expr};").unwrap();
    }
    s
}

/// The elementwise kernel's WGSL (without the prelude) and its metadata words (passed in the
/// uniform). With `vec4` (no strided leaf, `n % 4 == 0`), each invocation computes four
/// contiguous elements with 16-byte loads and stores, as the eager vec4 kernels do.
fn generate(insts: &[Inst], maps: &[&LeafMap], vec4: bool) -> (String, Vec<u32>) {
    let mut meta = Vec::new();
    let header = "    n: u32,\n    _p1: u32,\n    _p2: u32,\n    _p3: u32,\n    _p4: u32,\n    \
                  _p5: u32,\n    _p6: u32,\n    _p7: u32,\n";
    let mut s = declarations(maps, vec4, header);
    s.push_str(
        "@compute @workgroup_size(WG)\nfn main(\n    \
         @builtin(workgroup_id) wid: vec3<u32>,\n    \
         @builtin(num_workgroups) nwg: vec3<u32>,\n    \
         @builtin(local_invocation_index) lid: u32,\n) {\n    \
         let i = folded_index(wid, nwg, lid, WG);\n    \
         if (i >= p.n) {\n        return;\n    }\n",
    );
    s.push_str(&statements(insts, maps, vec4, &mut meta));
    writeln!(s, "    y[i] = v{};\n}}", insts.len() - 1).unwrap();
    (s, meta)
}

/// A kernel of `shaders/reduce.wgsl` (`entry`: `reduce` or `softmax`) over a program's values
/// (the program as its prologue): the entry point's own code, with each read of its input
/// replaced by the program's value at that flat index, so the reduction is the same code as the
/// eager one's.
fn generate_reduce(insts: &[Inst], maps: &[&LeafMap], entry: &str) -> (String, Vec<u32>) {
    let mut meta = Vec::new();
    let header = "    outer: u32,\n    len: u32,\n    inner: u32,\n    n_out: u32,\n    \
                  chunks: u32,\n    chunk: u32,\n    count: u32,\n    _pad: u32,\n";
    let mut s = declarations(maps, false, header);
    s.push_str(match entry {
        "softmax" => "override LOG: bool = false;\n\n",
        _ => "override OP: u32 = 0u;\n\n",
    });
    s.push_str("// The program's value at flat index i.\nfn value(i: u32) -> f32 {\n");
    s.push_str(&statements(insts, maps, false, &mut meta));
    writeln!(s, "    return v{};\n}}\n", insts.len() - 1).unwrap();
    s.push_str(&reads_through_value(&reduce_entry(entry)));
    (s, meta)
}

/// The entry point `name` of `shaders/reduce.wgsl`, from its attribute to its closing brace.
fn reduce_entry(name: &str) -> String {
    let src = include_str!("../../../shaders/reduce.wgsl");
    let start = src
        .find(&format!("@compute @workgroup_size(WG)\nfn {name}("))
        .unwrap_or_else(|| panic!("reduce.wgsl has no entry point {name}"));
    let end = start + src[start..].find("\n}\n").expect("the entry point ends") + 3;
    src[start..end].to_string()
}

/// `src` with every read `x[e]` of the input (no brackets inside `e`) turned into `value(e)`.
fn reads_through_value(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let mut rest = src;
    while let Some(at) = rest.find("x[") {
        let standalone = rest[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
        let close = rest[at..].find(']').map(|c| at + c);
        match close {
            Some(close) if standalone => {
                out.push_str(&rest[..at]);
                out.push_str("value(");
                out.push_str(&rest[at + 2..close]);
                out.push(')');
                rest = &rest[close + 1..];
            }
            _ => {
                out.push_str(&rest[..at + 2]);
                rest = &rest[at + 2..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The uniform of a generated kernel: four header words, then the metadata.
fn uniform(header: [u32; HEADER_WORDS], meta: &[u32]) -> [u32; HEADER_WORDS + META_WORDS] {
    // The caps on instructions, leaves and rank keep the metadata within the uniform.
    assert!(meta.len() <= META_WORDS, "fused metadata overflow");
    let mut params = [0u32; HEADER_WORDS + META_WORDS];
    params[..HEADER_WORDS].copy_from_slice(&header);
    params[HEADER_WORDS..HEADER_WORDS + meta.len()].copy_from_slice(meta);
    params
}

/// The shader for generated WGSL: one `Shader` per distinct source, kept for the life of the
/// process like the pipelines compiled from it (the pipeline cache keys modules by name).
fn intern(wgsl: String, ops: impl FnOnce() -> String) -> Shader {
    static SHADERS: OnceLock<Mutex<HashMap<String, Shader>>> = OnceLock::new();
    let mut map = SHADERS
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let next = map.len();
    *map.entry(wgsl).or_insert_with_key(|src| {
        let name: &'static str = Box::leak(format!("fused_{next}.wgsl").into_boxed_str());
        let body: &'static str = Box::leak(src.clone().into_boxed_str());
        log::debug!("new fused kernel {name}: {}", ops());
        log::trace!("{name}:\n{body}");
        Shader::file(name, body)
    })
}

impl Fused {
    /// The program as an op list for the log: `relu(add(x0, x1[broadcast]))`-style, one entry
    /// per instruction.
    fn describe(&self, prefix: &str) -> String {
        let list: Vec<String> = self
            .insts
            .iter()
            .enumerate()
            .map(|(k, inst)| match *inst {
                Inst::Load(l) => {
                    let how = match &self.leaves[l].1 {
                        LeafMap::Contiguous => "",
                        LeafMap::Scalar => " (scalar)",
                        LeafMap::Strided { .. } => " (strided)",
                    };
                    format!("v{k} = x{l}{how}")
                }
                Inst::Unary(op, x) => format!("v{k} = {}(v{x})", op.name()),
                Inst::Binary(op, a, b) => format!("v{k} = {}(v{a}, v{b})", op.name()),
            })
            .collect();
        format!("{prefix}[{}] over {} values", list.join("; "), self.n)
    }
}

/// Per-device fusion state: the switch, the programs not yet run, and counters.
pub(crate) struct FusionState {
    enabled: AtomicBool,
    pending: Mutex<Pending<Arc<PooledBuffer>>>,
    /// Fused kernels dispatched.
    pub(crate) kernels: AtomicU64,
    /// Elementwise ops those kernels computed.
    pub(crate) ops: AtomicU64,
}

impl FusionState {
    fn new(_: &GpuContext) -> FusionState {
        let enabled = std::env::var("KILN_FUSION").map_or(true, |v| v != "0");
        FusionState {
            enabled: AtomicBool::new(enabled),
            pending: Mutex::new(Pending::new()),
            kernels: AtomicU64::new(0),
            ops: AtomicU64::new(0),
        }
    }
}

/// Whether elementwise ops on this device fuse (`KILN_FUSION=0` turns it off at start).
pub(crate) fn enabled(ctx: &GpuContext) -> bool {
    ctx.state(FusionState::new).enabled.load(Ordering::Relaxed)
}

/// Turn fusion on or off for this device (programs already built still run).
pub(crate) fn set_enabled(ctx: &GpuContext, on: bool) {
    ctx.state(FusionState::new)
        .enabled
        .store(on, Ordering::Relaxed);
}

/// `(fused kernels dispatched, elementwise ops they computed)` on this device.
pub(crate) fn counters(ctx: &GpuContext) -> (u64, u64) {
    let s = ctx.state(FusionState::new);
    (
        s.kernels.load(Ordering::Relaxed),
        s.ops.load(Ordering::Relaxed),
    )
}

fn pending(ctx: &GpuContext, f: Arc<Fused>) -> Arc<Fused> {
    let state = ctx.state(FusionState::new);
    state
        .pending
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(&f);
    f
}

/// Run every program that a live tensor still holds (in the order they were built), so that
/// `Device::synchronize` means the work is done. Programs whose tensors are gone never run.
pub(crate) fn materialize_pending(ctx: &GpuContext) -> Result<()> {
    let state = ctx.state(FusionState::new);
    let live = state
        .pending
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take_live();
    for f in live {
        f.materialized(ctx)?;
    }
    Ok(())
}

/// A representative generated kernel, so that `tests/shaders.rs` validates the generator's
/// output without an adapter: every unary and binary op in one program, over one leaf of each
/// map.
const REPRESENTATIVE: Shader = Shader::derived("fused.wgsl", || {
    let insts = every_op(3);
    let strided = LeafMap::Strided {
        dims: vec![3, 4],
        strides: vec![0, 1],
        offset: 0,
    };
    generate(
        &insts,
        &[&LeafMap::Contiguous, &LeafMap::Scalar, &strided],
        false,
    )
    .0
});

/// The vec4 form of the representative program (contiguous and scalar leaves).
const REPRESENTATIVE_VEC4: Shader = Shader::derived("fused_vec4.wgsl", || {
    generate(
        &every_op(2),
        &[&LeafMap::Contiguous, &LeafMap::Scalar],
        true,
    )
    .0
});

/// A program that loads `leaves` leaves, then applies every unary op in turn and every binary
/// op with leaf 1.
fn every_op(leaves: usize) -> Vec<Inst> {
    let mut insts: Vec<Inst> = (0..leaves).map(Inst::Load).collect();
    for op in UnaryOp::ALL {
        insts.push(Inst::Unary(op, insts.len() - 1));
    }
    for op in BinaryOp::ALL {
        insts.push(Inst::Binary(op, insts.len() - 1, 1));
    }
    insts
}

/// A representative reduction with a program prologue.
const REPRESENTATIVE_REDUCE: Shader = Shader::derived("fused_reduce.wgsl", || {
    let mut insts: Vec<Inst> = vec![Inst::Load(0), Inst::Load(1), Inst::Load(2)];
    insts.push(Inst::Binary(BinaryOp::Mul, 0, 1));
    insts.push(Inst::Unary(UnaryOp::Exp, 3));
    insts.push(Inst::Binary(BinaryOp::Add, 4, 2));
    let strided = LeafMap::Strided {
        dims: vec![3, 4],
        strides: vec![0, 1],
        offset: 0,
    };
    let maps = [&LeafMap::Contiguous, &LeafMap::Scalar, &strided];
    generate_reduce(&insts, &maps, "reduce").0
});

/// A representative softmax with a program prologue (`softmax(x * s + mask)`).
const REPRESENTATIVE_SOFTMAX: Shader = Shader::derived("fused_softmax.wgsl", || {
    let insts = vec![
        Inst::Load(0),
        Inst::Unary(UnaryOp::MulScalar(0.5), 0),
        Inst::Load(1),
        Inst::Binary(BinaryOp::Add, 1, 2),
    ];
    let mask = LeafMap::Strided {
        dims: vec![3, 4],
        strides: vec![4, 1],
        offset: 0,
    };
    generate_reduce(&insts, &[&LeafMap::Contiguous, &mask], "softmax").0
});

fn specs() -> Vec<KernelSpec> {
    let mut specs: Vec<KernelSpec> = [REPRESENTATIVE, REPRESENTATIVE_VEC4]
        .into_iter()
        .map(|shader| KernelSpec {
            shader,
            entry: "main",
            constants: vec![("WG", f64::from(WG_1D))],
            unchecked: false,
        })
        .collect();
    specs.extend(ReduceOp::ALL.iter().map(|op| KernelSpec {
        shader: REPRESENTATIVE_REDUCE,
        entry: "reduce",
        constants: vec![("OP", f64::from(op.shader_id())), ("WG", f64::from(WG_1D))],
        unchecked: false,
    }));
    specs.extend([false, true].map(|log| KernelSpec {
        shader: REPRESENTATIVE_SOFTMAX,
        entry: "softmax",
        constants: vec![("LOG", f64::from(u8::from(log))), ("WG", f64::from(WG_1D))],
        unchecked: false,
    }));
    specs
}

/// This family's specializations (a representative generated kernel) and params.
pub(crate) const FAMILY: Family = Family {
    specs,
    params: &[
        ("fused.wgsl", "Params", UNIFORM_BYTES),
        ("fused_vec4.wgsl", "Params", UNIFORM_BYTES),
        ("fused_reduce.wgsl", "Params", UNIFORM_BYTES),
        ("fused_softmax.wgsl", "Params", UNIFORM_BYTES),
    ],
};

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic stream for the test's random programs.
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, n: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 33) as usize) % n
        }
    }

    fn validate(what: &str, body: String) {
        let shader = Shader::file("test.wgsl", Box::leak(body.into_boxed_str()));
        let src = shader.source();
        let module = naga::front::wgsl::parse_str(&src)
            .unwrap_or_else(|e| panic!("{what}: {}", e.emit_to_string(&src)));
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::all(),
        )
        .validate(&module)
        .unwrap_or_else(|e| panic!("{what}: {}", e.emit_to_string(&src)));
    }

    /// Random programs (every op, every leaf map, up to the caps) generate valid WGSL in every
    /// form the device may build: elementwise (scalar and vec4), reduction and softmax
    /// prologues. Checked by naga, with no adapter.
    #[test]
    fn random_programs_generate_valid_wgsl() {
        let mut rng = Lcg(3);
        let maps = [
            LeafMap::Contiguous,
            LeafMap::Scalar,
            LeafMap::Strided {
                dims: vec![2, 3, 4],
                strides: vec![12, 0, 1],
                offset: 5,
            },
        ];
        for case in 0..40 {
            let leaves = 1 + rng.below(MAX_LEAVES);
            let leaf_maps: Vec<&LeafMap> = (0..leaves).map(|_| &maps[rng.below(3)]).collect();
            let mut insts: Vec<Inst> = (0..leaves).map(Inst::Load).collect();
            while insts.len() < MAX_INSTS {
                let v = insts.len();
                insts.push(if rng.below(2) == 0 {
                    Inst::Unary(UnaryOp::ALL[rng.below(UnaryOp::ALL.len())], rng.below(v))
                } else {
                    let op = BinaryOp::ALL[rng.below(BinaryOp::ALL.len())];
                    Inst::Binary(op, rng.below(v), rng.below(v))
                });
                if rng.below(8) == 0 {
                    break;
                }
            }
            let what = format!("case {case}: {insts:?} over {leaf_maps:?}");
            validate(&what, generate(&insts, &leaf_maps, false).0);
            if leaf_maps
                .iter()
                .all(|m| !matches!(m, LeafMap::Strided { .. }))
            {
                validate(&what, generate(&insts, &leaf_maps, true).0);
            }
            validate(&what, generate_reduce(&insts, &leaf_maps, "reduce").0);
            validate(&what, generate_reduce(&insts, &leaf_maps, "softmax").0);
        }
    }
}
