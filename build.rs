//! Builds the sandbox agent (feature `local`): a small separate program, PID 1 of every
//! sandbox, that the library embeds and executes from a sealed memfd. See
//! `src/local/sys/agent/main.rs` for why it is a program of its own.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    const SRC: &str = "src/local/sys/agent";
    println!("cargo:rerun-if-changed={SRC}");
    println!("cargo:rerun-if-changed=src/local/sys/proto.rs");
    println!("cargo:rerun-if-env-changed=RUSTC_WORKSPACE_WRAPPER");
    println!("cargo:rerun-if-env-changed=CLIPPY_ARGS");
    if std::env::var_os("CARGO_FEATURE_LOCAL").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let target = std::env::var("TARGET").expect("cargo sets TARGET");
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    // Under `cargo clippy` the agent is linted too: clippy-driver is the workspace wrapper,
    // called like rustc, and reads the lint flags from CLIPPY_ARGS.
    let mut cmd = match std::env::var_os("RUSTC_WORKSPACE_WRAPPER") {
        Some(w) if std::env::var_os("CLIPPY_ARGS").is_some() => {
            let mut c = Command::new(w);
            c.arg(&rustc);
            c
        }
        _ => Command::new(&rustc),
    };
    cmd.args(["--edition", "2021", "--crate-type", "bin", "--crate-name"])
        .arg("superserve_agent")
        .args(["--target", &target])
        .args([
            "-C",
            "opt-level=s",
            "-C",
            "panic=abort",
            "-C",
            "debuginfo=0",
        ])
        .args(["-C", "strip=symbols", "-D", "warnings"])
        // the manifest's [lints]: the agent is part of the syscall layer and allows
        // `unsafe_code` itself; every unsafe block carries its SAFETY note
        .args(["-D", "unsafe_code", "-D", "unsafe_op_in_unsafe_fn"])
        .args(["-W", "missing_debug_implementations"])
        .args(["-D", "clippy::undocumented_unsafe_blocks"])
        .arg("-o")
        .arg(out.join("superserve-agent"))
        .arg(format!("{SRC}/main.rs"));
    let linker_var = format!(
        "CARGO_TARGET_{}_LINKER",
        target.to_uppercase().replace(['-', '.'], "_")
    );
    if let Some(linker) = std::env::var_os(&linker_var) {
        cmd.arg("-C")
            .arg(format!("linker={}", linker.to_string_lossy()));
    }
    let status = cmd
        .status()
        .expect("cannot run rustc to build the sandbox agent");
    assert!(status.success(), "building the sandbox agent failed");
}
