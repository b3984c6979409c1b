//! The op registry: the closed op set, each family declared once (`registry::op_family!`).
//!
//! A family's table gives each op its Rust enum variant, API name, explicit shader selector and
//! WGSL formula. The Rust formulas (`apply`, `derivative`) are exhaustive matches beside the
//! table, so a new op does not compile without them; [`wgsl_prelude`] turns the tables into the
//! WGSL that every shader is compiled with (selector constants, one function per op, and the
//! `activate`/`derivative`/`binary_op` dispatchers), so Rust and WGSL cannot drift apart.

mod binary;
pub(crate) mod math;
mod reduce;
mod registry;
mod unary;

pub use binary::BinaryOp;
pub use reduce::ReduceOp;
pub use unary::UnaryOp;
pub(crate) use unary::{NO_ACTIVATION, gelu_derivative};

use std::fmt::Write;
use std::sync::OnceLock;

/// Helpers every shader may use (NaN tests, overflow-free math, the folded grid index).
const COMMON: &str = include_str!("../../shaders/common.wgsl");

/// `shaders/common.wgsl` followed by the WGSL generated from the registry: prepended to every
/// shader (WGSL has no `#include`).
pub(crate) fn wgsl_prelude() -> &'static str {
    static PRELUDE: OnceLock<String> = OnceLock::new();
    PRELUDE.get_or_init(|| format!("{COMMON}\n{}", generated_wgsl()))
}

/// The registry as WGSL: selector constants for every family; for unary and binary ops one
/// function per op and a dispatcher over the selector. A selector no case handles gives NaN, so
/// a missing op shows as wrong values instead of another op's result.
fn generated_wgsl() -> String {
    let mut s = String::from("// ---- generated from the op registry (src/op/) ----\n");
    let mut consts = |name: String, id: u32| writeln!(s, "const {name}: u32 = {id}u;").unwrap();
    UnaryOp::ALL
        .iter()
        .for_each(|op| consts(op.wgsl_const(), op.shader_id()));
    consts("UNARY_NONE".into(), NO_ACTIVATION);
    BinaryOp::ALL
        .iter()
        .for_each(|op| consts(op.wgsl_const(), op.shader_id()));
    ReduceOp::ALL
        .iter()
        .for_each(|op| consts(op.wgsl_const(), op.shader_id()));

    let unary_fn = |s: &mut String, op: UnaryOp, suffix: &str, body: &str| {
        let name = op.name();
        writeln!(
            s,
            "fn unary_{name}{suffix}(v: f32, alpha: f32, beta: f32) -> f32 {{ return {body}; }}"
        )
        .unwrap();
    };
    for op in UnaryOp::ALL {
        unary_fn(
            &mut s,
            op,
            "",
            op.wgsl().expect("every unary op has a WGSL formula"),
        );
        let grad = op
            .wgsl_grad()
            .expect("every unary op has a WGSL derivative");
        unary_fn(&mut s, op, "_grad", grad);
    }
    for (dispatcher, suffix, none) in [("activate", "", "v"), ("derivative", "_grad", "1.0")] {
        writeln!(
            s,
            "fn {dispatcher}(op: u32, v: f32, alpha: f32, beta: f32) -> f32 {{\n    \
             var r = nan_f32();\n    switch op {{\n        case UNARY_NONE: {{ r = {none}; }}"
        )
        .unwrap();
        for op in UnaryOp::ALL {
            let (c, name) = (op.wgsl_const(), op.name());
            writeln!(
                s,
                "        case {c}: {{ r = unary_{name}{suffix}(v, alpha, beta); }}"
            )
            .unwrap();
        }
        s.push_str("        default: {}\n    }\n    return select(r, v, is_nan(v));\n}\n");
    }

    for op in BinaryOp::ALL {
        let body = op.wgsl().expect("every binary op has a WGSL formula");
        let name = op.name();
        writeln!(
            s,
            "fn binary_{name}(x: f32, y: f32) -> f32 {{ return {body}; }}"
        )
        .unwrap();
    }
    s.push_str(
        "fn binary_op(op: u32, x: f32, y: f32) -> f32 {\n    var r = nan_f32();\n    switch op {\n",
    );
    for op in BinaryOp::ALL {
        let (c, name) = (op.wgsl_const(), op.name());
        writeln!(s, "        case {c}: {{ r = binary_{name}(x, y); }}").unwrap();
    }
    s.push_str("        default: {}\n    }\n    return r;\n}\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// Selectors are what the table says: distinct, dense from 0, and never the "no activation"
    /// selector; names are distinct (they name the WGSL constants and functions).
    fn check_family(ids: Vec<u32>, names: Vec<&str>) {
        let n = ids.len() as u32;
        let unique: HashSet<u32> = ids.iter().copied().collect();
        assert_eq!(unique.len(), ids.len(), "duplicate selector in {names:?}");
        assert!(ids.iter().all(|&i| i < n), "selectors not dense: {ids:?}");
        assert!(!unique.contains(&NO_ACTIVATION));
        let names_unique: HashSet<&str> = names.iter().copied().collect();
        assert_eq!(
            names_unique.len(),
            names.len(),
            "duplicate name in {names:?}"
        );
    }

    #[test]
    fn selectors_are_distinct_and_dense() {
        check_family(
            UnaryOp::ALL.iter().map(|o| o.shader_id()).collect(),
            UnaryOp::ALL.iter().map(|o| o.name()).collect(),
        );
        check_family(
            BinaryOp::ALL.iter().map(|o| o.shader_id()).collect(),
            BinaryOp::ALL.iter().map(|o| o.name()).collect(),
        );
        check_family(
            ReduceOp::ALL.iter().map(|o| o.shader_id()).collect(),
            ReduceOp::ALL.iter().map(|o| o.name()).collect(),
        );
    }

    /// An op's ONNX name finds that op again (with its example parameters, which are ONNX's
    /// defaults), no two ops share one, and parameters come from the attribute of their name.
    #[test]
    fn onnx_names_round_trip() {
        let mut seen = HashSet::new();
        for op in UnaryOp::ALL {
            if let Some(name) = op.onnx_name() {
                assert!(seen.insert(name), "two ops are ONNX's {name}");
                assert_eq!(UnaryOp::from_onnx(name, |_, d| d), Some(op), "{name}");
            }
        }
        for op in BinaryOp::ALL {
            if let Some(name) = op.onnx_name() {
                assert!(seen.insert(name), "two ops are ONNX's {name}");
                assert_eq!(BinaryOp::from_onnx(name, |_, d| d), Some(op), "{name}");
            }
        }
        assert_eq!(
            UnaryOp::from_onnx("HardSigmoid", |n, d| if n == "beta" { 0.25 } else { d }),
            Some(UnaryOp::HardSigmoid(0.2, 0.25))
        );
        assert_eq!(
            UnaryOp::HardSigmoid(0.2, 0.5).param_names(),
            ["alpha", "beta"]
        );
        assert_eq!(
            UnaryOp::from_onnx("Gelu", |_, d| d),
            None,
            "Gelu depends on `approximate`"
        );
        assert_eq!(
            BinaryOp::from_onnx("Max", |_, d| d),
            None,
            "ONNX's Max is variadic"
        );
    }

    #[test]
    fn the_prelude_declares_every_selector_with_its_rust_value() {
        let p = wgsl_prelude();
        let all: Vec<(String, u32)> = UnaryOp::ALL
            .iter()
            .map(|o| (o.wgsl_const(), o.shader_id()))
            .chain(
                BinaryOp::ALL
                    .iter()
                    .map(|o| (o.wgsl_const(), o.shader_id())),
            )
            .chain(
                ReduceOp::ALL
                    .iter()
                    .map(|o| (o.wgsl_const(), o.shader_id())),
            )
            .collect();
        for (name, id) in all {
            assert!(p.contains(&format!("const {name}: u32 = {id}u;")), "{name}");
        }
    }

    #[test]
    fn the_prelude_is_valid_wgsl() {
        // A compute entry point keeps naga from discarding nothing; validation covers every
        // generated function whether or not a shader calls it.
        let src = format!(
            "{}\n@compute @workgroup_size(1) fn main() {{}}\n",
            wgsl_prelude()
        );
        let module = naga::front::wgsl::parse_str(&src).unwrap_or_else(|e| {
            panic!("{}", e.emit_to_string(&src));
        });
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::all(),
        )
        .validate(&module)
        .unwrap_or_else(|e| panic!("{e:?}"));
    }
}
