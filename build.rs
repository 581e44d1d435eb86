//! Builds the programs the local backend (feature `local`) runs inside sandboxes, small
//! separate programs that the library embeds:
//!
//! * the sandbox agent, PID 1 of every sandbox, executed from a sealed memfd (see
//!   `src/local/sys/agent/main.rs` for why it is a program of its own);
//! * the desktop helper, the X client of a desktop sandbox (see
//!   `src/local/desktop/helper/main.rs`: it keeps the X11 protocol, which the sandbox
//!   controls, out of the backend).

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    const AGENT: &str = "src/local/sys/agent";
    const HELPER: &str = "src/local/desktop/helper";
    println!("cargo:rerun-if-changed={AGENT}");
    println!("cargo:rerun-if-changed=src/local/sys/proto.rs");
    println!("cargo:rerun-if-changed={HELPER}");
    println!("cargo:rerun-if-changed=src/local/desktop/wire.rs");
    println!("cargo:rerun-if-env-changed=RUSTC_WORKSPACE_WRAPPER");
    println!("cargo:rerun-if-env-changed=CLIPPY_ARGS");
    if std::env::var_os("CARGO_FEATURE_LOCAL").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    // the agent is small and starts every process: optimised for size
    build(
        "superserve_agent",
        &format!("{AGENT}/main.rs"),
        &out.join("superserve-agent"),
        "s",
    );
    // the helper converts every captured frame's pixels: optimised for speed
    build(
        "superserve_desktop_helper",
        &format!("{HELPER}/main.rs"),
        &out.join("superserve-desktop-helper"),
        "3",
    );
}

/// Compiles one program (`std` only, no dependencies) with the manifest's lints.
fn build(crate_name: &str, main: &str, output: &Path, opt_level: &str) {
    let target = std::env::var("TARGET").expect("cargo sets TARGET");
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    // Under `cargo clippy` the programs are linted too: clippy-driver is the workspace
    // wrapper, called like rustc, and reads the lint flags from CLIPPY_ARGS.
    let mut cmd = match std::env::var_os("RUSTC_WORKSPACE_WRAPPER") {
        Some(w) if std::env::var_os("CLIPPY_ARGS").is_some() => {
            let mut c = Command::new(w);
            c.arg(&rustc);
            c
        }
        _ => Command::new(&rustc),
    };
    cmd.args(["--edition", "2021", "--crate-type", "bin", "--crate-name"])
        .arg(crate_name)
        .args(["--target", &target])
        .args([
            "-C",
            &format!("opt-level={opt_level}"),
            "-C",
            "panic=abort",
            "-C",
            "debuginfo=0",
        ])
        .args(["-C", "strip=symbols", "-D", "warnings"])
        // the manifest's [lints]: the agent is part of the syscall layer and allows
        // `unsafe_code` itself; every unsafe block carries its SAFETY note (the desktop
        // helper forbids unsafe code altogether)
        .args(["-D", "unsafe_code", "-D", "unsafe_op_in_unsafe_fn"])
        .args(["-W", "missing_debug_implementations"])
        .args(["-D", "clippy::undocumented_unsafe_blocks"])
        .arg("-o")
        .arg(output)
        .arg(main);
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
        .unwrap_or_else(|e| panic!("cannot run rustc to build {crate_name}: {e}"));
    assert!(status.success(), "building {crate_name} failed");
}
