//! `kiln-bindgen IN.wasm OUT_DIR`: the JS glue (`--target web`, no TypeScript) for a
//! wasm-bindgen module, as `wasm-bindgen --target web --no-typescript --out-dir OUT_DIR IN.wasm`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, out_dir] = &args[..] else {
        eprintln!("usage: kiln-bindgen IN.wasm OUT_DIR");
        return ExitCode::from(2);
    };
    let mut bindgen = wasm_bindgen_cli_support::Bindgen::new();
    bindgen
        .input_path(input)
        .typescript(false)
        .omit_default_module_path(false);
    let generated = bindgen.web(true).and_then(|b| b.generate(out_dir));
    match generated {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kiln-bindgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}
