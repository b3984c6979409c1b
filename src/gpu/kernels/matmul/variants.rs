//! Variants of `matmul_blocked.wgsl` made by templating (WGSL has no generics): the f16-storage
//! matmul switches its `Elem` alias to f16; the subgroup matmul shares each k step's A vector
//! through subgroup shuffles instead of every lane reading it from workgroup memory.

use crate::gpu::pipelines::{Shader, shader};

/// Version 2 (register-blocked), the file the variants are made from.
pub(super) const BLOCKED: Shader = shader!("matmul_blocked.wgsl");

/// Version 2 with f16 operands (`matmul_f16`).
pub(super) const F16: Shader = Shader::derived("matmul_blocked_f16.wgsl", || {
    format!(
        "enable f16;\n{}",
        BLOCKED
            .body()
            .replace("alias Elem = f32;", "alias Elem = f16;")
    )
});

/// Version 2 with the A operand shared by `subgroupShuffle` (4 x 4 outputs per invocation).
pub(super) const SUBGROUP: Shader = Shader::derived("matmul_blocked_sg.wgsl", || {
    let with_lanes = BLOCKED.body().replace(
        "    @builtin(local_invocation_index) tid: u32,\n) {",
        "    @builtin(local_invocation_index) tid: u32,\n    \
         @builtin(subgroup_invocation_id) lane: u32,\n) {",
    );
    SUBGROUP_K_STEP
        .iter()
        .fold(with_lanes, |s, (from, to)| s.replace(from, to))
});

/// Version 2 with 8 x 8 outputs per invocation (`MatmulConfig::Wide`).
pub(super) const WIDE: Shader = Shader::derived("matmul_blocked_wide.wgsl", || {
    BLOCKED.body().replace(THREAD_TILE.0, THREAD_TILE.1)
});

/// The invocation's block of C in `matmul_blocked.wgsl`, and the wide variant's.
const THREAD_TILE: (&str, &str) = (
    "const TM: u32 = 4u;\nconst TN: u32 = 4u;\n",
    "const TM: u32 = 8u;\nconst TN: u32 = 8u;\n",
);

/// The k-step loop of `matmul_blocked.wgsl` and its subgroup version (see the shader's header):
/// lane l loads the A vector of k step l before the loop, and each step shuffles it from there.
const SUBGROUP_K_STEP: [(&str, &str); 2] = [
    (
        "        for (var kk = 0u; kk < BK; kk = kk + 1u) {\n            var bv",
        "        var own_a = vec4<f32>(0.0);
        if (lane < BK) {
            own_a = tile_a[(lane * BM + lid.y * 4u) / 4u];
        }
        for (var kk = 0u; kk < BK; kk = kk + 1u) {\n            var bv",
    ),
    (
        "let av = tile_a[(kk * BM + h * (BM / GM) + lid.y * 4u) / 4u];",
        "let av = subgroupShuffle(own_a, kk);",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    /// The variants are built by string replacement: if `matmul_blocked.wgsl` changes under
    /// them, the replacements must not silently stop matching.
    #[test]
    fn variants_apply_their_replacements() {
        let f16 = F16.source();
        assert!(f16.starts_with("enable f16;") && f16.contains("alias Elem = f16;"));
        let sg = SUBGROUP.source();
        assert!(sg.contains("@builtin(subgroup_invocation_id) lane: u32"));
        assert!(sg.contains("subgroupShuffle(own_a, kk)") && sg.contains("own_a = tile_a"));
        assert!(!sg.contains(SUBGROUP_K_STEP[1].0));
        let wide = WIDE.source();
        assert!(wide.contains(THREAD_TILE.1) && !wide.contains(THREAD_TILE.0));
    }
}
