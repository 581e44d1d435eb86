//! Benchmark of the local backend's templates: create → first command (p50) for sandboxes
//! from a built template (one from `superserve/base`, one from an OCI image) against a plain
//! `superserve/base` sandbox, the baseline measured in the same run; and the layer store's
//! size for two templates whose images share their large base layers against the sum of the
//! two images. The images are pushed to Debian's `docker-registry` on a loopback port.
//! (Pull + unpack throughput against `skopeo copy` is `bench_pull`'s.)
//!
//! ```text
//! cargo run --release --example bench_template --all-features
//! ```

#[path = "../src/local/oci/testutil.rs"]
mod testutil;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use superserve::local::LocalServer;
use superserve::{
    BuildStep, CreateOptions, Sandbox, Template, TemplateOptions, TemplateWaitOptions,
};
use testutil::{busybox_layer, config_json, gzip, Tar, TestRegistry};

const CREATES: usize = 15;
const SHARED_MIB: usize = 48;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Bytes the files under `p` take on disk.
fn du(p: &Path) -> u64 {
    let Ok(m) = std::fs::symlink_metadata(p) else {
        return 0;
    };
    let own = m.blocks() * 512;
    if m.is_dir() {
        own + std::fs::read_dir(p)
            .map(|d| d.flatten().map(|e| du(&e.path())).sum())
            .unwrap_or(0)
    } else {
        own
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / 1048576.0
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let reg = TestRegistry::start();
    let base = gzip(&busybox_layer(|_| {}), 6);
    let noise: Vec<u8> = (0..SHARED_MIB * 1048576)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[3])
        .collect();
    let shared = gzip(&Tar::new().file("opt/shared.bin", &noise).finish(), 1);
    let cfg = config_json(
        "amd64",
        &["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
        "/",
        "",
        &["sh"],
    );
    let mut pushed_layers: Vec<String> = Vec::new();
    for name in ["one", "two"] {
        let top = gzip(
            &Tar::new()
                .file(&format!("etc/{name}"), name.as_bytes())
                .finish(),
            6,
        );
        let p = reg.push_image(
            &format!("bench/{name}"),
            "v1",
            &[base.clone(), shared.clone(), top],
            &cfg,
            false,
        );
        pushed_layers.extend(p.layers);
    }

    let server = LocalServer::builder().start()?;
    let config = server.config();
    let wait = || TemplateWaitOptions::new().timeout(Duration::from_secs(600));
    let mut oci = Vec::new();
    for name in ["one", "two"] {
        let t = Template::create_with_config(
            &config,
            TemplateOptions::new(format!("bench-{name}"))
                .from_image(format!("{}/bench/{name}:v1", reg.host())),
        )?;
        t.wait_until_ready(wait())?;
        oci.push(t);
    }
    // what each image takes unpacked on its own (a store without sharing holds both)
    let layers = server.data_dir().join("layers");
    let store = du(&layers);
    // each image's layers counted once per image that has them
    let image_bytes: u64 = pushed_layers.iter().map(|d| du(&layers.join(d))).sum();
    println!(
        "layer store for two templates sharing {} MiB of base layers: {:.1} MiB; the two \
         images unpacked side by side: {:.1} MiB; ratio {:.2}",
        SHARED_MIB,
        mib(store),
        mib(image_bytes),
        store as f64 / image_bytes as f64
    );

    let built = Template::create_with_config(
        &config,
        TemplateOptions::new("bench-steps")
            .step(BuildStep::run(
                "mkdir -p /opt/app && head -c 8M /dev/urandom > /opt/app/data",
            ))
            .step(BuildStep::env("APP", "1"))
            .step(BuildStep::workdir("/opt/app")),
    )?;
    built.wait_until_ready(wait())?;

    let mut plain = Vec::new();
    let mut from_tpl = Vec::new();
    let mut from_oci = Vec::new();
    for i in 0..CREATES {
        for kind in 0..3 {
            let mut opts = CreateOptions::new(format!("bench-{i}-{kind}"));
            opts = match kind {
                1 => opts.from_template(&built),
                2 => opts.from_template(&oci[0]),
                _ => opts,
            };
            let t = Instant::now();
            let sb = Sandbox::create_with_config(&config, opts)?;
            let r = sb.commands().run("true")?;
            assert_eq!(r.exit_code, 0);
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            sb.kill()?;
            match kind {
                1 => from_tpl.push(ms),
                2 => from_oci.push(ms),
                _ => plain.push(ms),
            }
        }
    }
    let (p, t, o) = (median(plain), median(from_tpl), median(from_oci));
    println!(
        "create -> first command (p50 of {CREATES}): superserve/base {p:.1} ms, built template \
         {t:.1} ms (ratio {:.2}), OCI-image template {o:.1} ms (ratio {:.2})",
        t / p,
        o / p
    );
    for t in oci {
        t.delete()?;
    }
    built.delete()?;
    Ok(())
}
