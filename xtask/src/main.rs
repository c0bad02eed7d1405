//! Project tasks that need more than cargo: `cargo xtask codegen [--check]`,
//! `cargo xtask layers`, `cargo xtask bench [--smoke | --scale | --instructions | --soak | --page]`,
//! `cargo xtask contract`, `cargo xtask gateway`.

mod bench;
mod callgrind;
mod codegen;
mod contract;
mod estate;
mod gateway;
mod layers;
mod load;
mod page_bench;
mod scale;
mod services;
mod soak;
mod store_bench;

use std::path::{Path, PathBuf};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flags: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
    match args.first().map(String::as_str) {
        Some("codegen") => codegen::generate(flags.contains(&"--check")),
        Some("bench") => bench::run(&flags),
        Some("contract") => contract::run(),
        Some("gateway") => gateway::run(),
        Some("layers") => layers::run(),
        _ => {
            eprintln!(
                "usage: cargo xtask <codegen [--check] | layers | bench [--smoke | --scale | --instructions | --soak | --page] | contract | gateway>"
            );
            std::process::exit(2);
        }
    }
}

/// The workspace root, whatever directory the task was started from.
pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the root")
        .to_path_buf()
}
