//! Every WGSL file parses and validates with naga, and every specialization the host uses
//! (override constants applied) validates and compiles to SPIR-V. No adapter needed.

use naga::valid::{Capabilities, ValidationFlags, Validator};

fn validator() -> Validator {
    Validator::new(ValidationFlags::all(), Capabilities::all())
}

fn parse(name: &str, src: &str) -> naga::Module {
    naga::front::wgsl::parse_str(src)
        .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(src)))
}

#[test]
fn every_shader_parses_and_validates() {
    for (name, src) in kiln::gpu::shaders() {
        let module = parse(name, &src);
        validator()
            .validate(&module)
            .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(&src)));
    }
}

#[test]
fn every_specialization_validates_and_compiles() {
    let specs = kiln::gpu::all_specs();
    assert!(
        specs.len() >= 12,
        "expected every unary, binary and matmul spec, got {}",
        specs.len()
    );
    for spec in specs {
        let src = spec.source();
        assert!(!src.is_empty(), "{} is not registered", spec.shader.name());
        let module = parse(spec.shader.name(), &src);
        let info = validator()
            .validate(&module)
            .unwrap_or_else(|e| panic!("{}: {}", spec.shader.name(), e.emit_to_string(&src)));
        let mut constants = naga::back::PipelineConstants::default();
        for (name, value) in &spec.constants {
            assert!(
                module
                    .overrides
                    .iter()
                    .any(|(_, o)| o.name.as_deref() == Some(*name)),
                "{spec:?}: the shader has no override named {name}"
            );
            constants.insert((*name).to_string(), *value);
        }
        let (module, info) = naga::back::pipeline_constants::process_overrides(
            &module,
            &info,
            Some((naga::ShaderStage::Compute, spec.entry)),
            &constants,
        )
        .unwrap_or_else(|e| panic!("{spec:?}: {e:?}"));
        assert!(
            module.entry_points.iter().any(|e| e.name == spec.entry),
            "{spec:?}: no entry point {}",
            spec.entry
        );
        let info = validator()
            .validate(&module)
            .map(|_| info)
            .unwrap_or_else(|e| panic!("{spec:?} after overrides: {e:?}"));
        naga::back::spv::write_vec(
            &module,
            &info,
            &naga::back::spv::Options::default(),
            Some(&naga::back::spv::PipelineOptions {
                shader_stage: naga::ShaderStage::Compute,
                entry_point: spec.entry.to_string(),
            }),
        )
        .unwrap_or_else(|e| panic!("{spec:?} to SPIR-V: {e}"));
    }
}

#[test]
fn params_structs_match_the_rust_layout() {
    // Every shader with a uniform params struct is listed (a new shader cannot be forgotten).
    for (shader, src) in kiln::gpu::shaders() {
        let listed = kiln::gpu::param_structs()
            .iter()
            .any(|(s, _, _)| *s == shader);
        assert!(
            listed || !src.contains("var<uniform>"),
            "{shader} has a uniform struct that param_structs() does not list"
        );
    }
    for (shader, name, rust_size) in kiln::gpu::param_structs() {
        let src = kiln::gpu::shaders()
            .into_iter()
            .find(|(n, _)| *n == shader)
            .unwrap()
            .1;
        let module = parse(shader, &src);
        let mut layouter = naga::proc::Layouter::default();
        layouter.update(module.to_ctx()).unwrap();
        let (handle, _) = module
            .types
            .iter()
            .find(|(_, t)| t.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("{shader}: no struct {name}"));
        let wgsl_size = layouter[handle].size as usize;
        assert_eq!(
            wgsl_size, rust_size,
            "{shader}::{name}: WGSL {wgsl_size} bytes, Rust {rust_size}"
        );
    }
}

/// Shaders name op selectors only through the registry's generated constants (UNARY_*,
/// BINARY_*, REDUCE_*) or its dispatchers, never as numbers, so a shader cannot disagree with
/// the Rust ids: a numeric `case` label or an `OP == 3u` test fails here, on any machine.
#[test]
fn shaders_name_op_selectors_through_the_registry() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let src = std::fs::read_to_string(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        for (n, line) in src.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            let numeric_case = code
                .split("case ")
                .skip(1)
                .any(|rest| rest.trim_start().starts_with(|c: char| c.is_ascii_digit()));
            let numeric_op_test = ["OP ==", "OP !=", "ACT ==", "ACT !="].iter().any(|t| {
                code.split(t)
                    .skip(1)
                    .any(|rest| rest.trim_start().starts_with(|c: char| c.is_ascii_digit()))
            });
            assert!(
                !numeric_case && !numeric_op_test,
                "{name}:{}: an op selector written as a number: {line}",
                n + 1
            );
        }
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} shaders found in {dir:?}");
}
