//! Pulls from a real registry (Debian's `docker-registry`) on loopback, of images built and
//! pushed here.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::testutil::{
    busybox, busybox_layer, config_json, free_port, gzip, Scratch, Tar, TestRegistry,
};
use super::*;

fn run<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// Pulls and returns the result with the log lines.
fn pull_logged(
    opts: &PullOptions,
    reference: &str,
    store: &Path,
) -> (Result<PulledImage, OciError>, Vec<String>) {
    let lines = Mutex::new(Vec::new());
    let r = run(pull(opts, reference, store, &|l: &str| {
        lines.lock().unwrap().push(l.to_owned())
    }));
    (r, lines.into_inner().unwrap())
}

/// The two-layer test image: busybox and files in the first layer; the second deletes
/// `etc/gone`, makes `opaque/` opaque and adds files with particular metadata.
fn test_layers() -> Vec<Vec<u8>> {
    let l1 = busybox_layer(|t| {
        t.file("etc/gone", b"deleted by layer 2")
            .file("etc/keep", b"kept")
            .dir("opaque", 0o755)
            .file("opaque/old1", b"hidden by layer 2")
            .dir("opaque/sub", 0o755)
            .file("opaque/sub/old2", b"hidden by layer 2");
    });
    let mut t = Tar::new();
    t.dir("etc", 0o755)
        .file("etc/.wh.gone", b"")
        .dir("opaque", 0o750)
        .file("opaque/.wh..wh..opq", b"")
        .file("opaque/new", b"added by layer 2")
        .file_with(
            "srv/app/run",
            b"#!/bin/sh\necho run\n",
            0o4755,
            1000,
            1001,
            1_234_567_890,
        )
        .file_xattr("srv/app/tagged", b"x", "user.superserve", b"hello")
        .hardlink("srv/app/run2", "srv/app/run")
        .symlink("srv/app/latest", "run");
    vec![gzip(&l1, 6), gzip(&t.finish(), 6)]
}

fn test_config() -> Vec<u8> {
    config_json(
        "amd64",
        &["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "GREETING=hi"],
        "/srv/app",
        "1000:1001",
        &["/bin/sh", "-c", "echo hi"],
    )
}

fn names_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

fn store_entries(store: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(store)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn pull_by_full_reference_unpacks_layers_with_overlay_whiteouts() {
    let reg = TestRegistry::start();
    let pushed = reg.push_image("test/busybox", "1.0", &test_layers(), &test_config(), true);
    let scratch = Scratch::new("pull");
    let store = scratch.0.join("layers");
    let reference = format!("{}/test/busybox:1.0", reg.host());
    let (r, log) = pull_logged(&PullOptions::default(), &reference, &store);
    let img = r.unwrap_or_else(|e| panic!("pull failed: {e}"));

    assert_eq!(img.reference, reference);
    assert_eq!(img.digest, pushed.manifest_digest);
    assert_eq!(img.manifest_digest, pushed.manifest_digest);
    assert_eq!(img.source, reg.host());
    let digests: Vec<_> = img.layers.iter().map(|l| l.digest.clone()).collect();
    assert_eq!(
        digests, pushed.layers,
        "layers bottom first, keyed by blob digest"
    );
    assert!(img.layers.iter().all(|l| l.downloaded));
    assert_eq!(
        img.config,
        ImageConfig {
            env: vec![
                "PATH=/usr/sbin:/usr/bin:/sbin:/bin".into(),
                "GREETING=hi".into()
            ],
            working_dir: Some("/srv/app".into()),
            user: Some("1000:1001".into()),
            entrypoint: vec![],
            cmd: vec!["/bin/sh".into(), "-c".into(), "echo hi".into()],
        }
    );
    let mut expected: Vec<String> = pushed.layers.clone();
    expected.sort();
    assert_eq!(
        store_entries(&store),
        expected,
        "only complete layer dirs remain"
    );
    for l in &img.layers {
        assert_eq!(l.dir, store.join(&l.digest));
    }
    assert!(log.iter().any(|l| l.starts_with("pulling ")), "{log:?}");
    assert!(
        log.iter().filter(|l| l.contains(" done (")).count() == 2,
        "{log:?}"
    );

    let (l1, l2) = (&img.layers[0].dir, &img.layers[1].dir);
    // layer 1: the real busybox, which runs, and its applet links
    assert_eq!(fs::read(l1.join("bin/busybox")).unwrap(), busybox());
    let out = std::process::Command::new(l1.join("bin/busybox"))
        .args(["echo", "from the layer"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from the layer\n");
    assert_eq!(
        fs::read_link(l1.join("bin/sh")).unwrap(),
        Path::new("/bin/busybox")
    );
    assert_eq!(
        fs::metadata(l1.join("tmp")).unwrap().mode() & 0o7777,
        0o1777
    );
    // layer 2: whiteouts in overlay form
    let gone = fs::symlink_metadata(l2.join("etc/gone")).unwrap();
    assert!(
        gone.file_type().is_char_device(),
        "whiteout is a char device"
    );
    assert_eq!(gone.rdev(), 0, "whiteout is device 0/0");
    assert_eq!(
        sys::lgetxattr(&l2.join("opaque"), "trusted.overlay.opaque").unwrap(),
        Some(b"y".to_vec())
    );
    assert_eq!(
        sys::lgetxattr(&l2.join("etc"), "trusted.overlay.opaque").unwrap(),
        None
    );
    let leftovers: Vec<_> = names_under(l2)
        .into_iter()
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(".wh."))
        .collect();
    assert!(
        leftovers.is_empty(),
        "no .wh. names in the layer: {leftovers:?}"
    );
    // owners, modes, times, xattrs, links as the layer says
    let run_md = fs::symlink_metadata(l2.join("srv/app/run")).unwrap();
    assert_eq!((run_md.uid(), run_md.gid()), (1000, 1001));
    assert_eq!(run_md.mode() & 0o7777, 0o4755, "set-uid bit kept");
    assert_eq!(run_md.mtime(), 1_234_567_890);
    assert_eq!(run_md.nlink(), 2, "hard link inside the layer");
    assert_eq!(
        fs::symlink_metadata(l2.join("srv/app/run2")).unwrap().ino(),
        run_md.ino()
    );
    assert_eq!(
        fs::metadata(l2.join("opaque")).unwrap().mode() & 0o7777,
        0o750
    );
    assert_eq!(
        fs::metadata(l2.join("opaque")).unwrap().mtime(),
        1_600_000_000
    );
    assert_eq!(
        sys::lgetxattr(&l2.join("srv/app/tagged"), "user.superserve").unwrap(),
        Some(b"hello".to_vec())
    );
    assert_eq!(
        fs::read_link(l2.join("srv/app/latest")).unwrap(),
        Path::new("run")
    );

    // and overlayfs reads them as intended: stack layer 2 over layer 1
    let mnt = scratch.0.join("mnt");
    fs::create_dir(&mnt).unwrap();
    // plain names for the lowerdir option (':' separates layers there)
    std::os::unix::fs::symlink(l1, scratch.0.join("l1")).unwrap();
    std::os::unix::fs::symlink(l2, scratch.0.join("l2")).unwrap();
    let opts = format!(
        "lowerdir={}:{}",
        scratch.0.join("l2").display(),
        scratch.0.join("l1").display()
    );
    let st = std::process::Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(st.success(), "mount overlay");
    let seen = (
        mnt.join("etc/gone").exists(),
        mnt.join("etc/keep").exists(),
        mnt.join("opaque/old1").exists(),
        mnt.join("opaque/sub").exists(),
        fs::read(mnt.join("opaque/new")).ok(),
        mnt.join("bin/busybox").exists(),
    );
    let _ = std::process::Command::new("umount").arg(&mnt).status();
    assert_eq!(
        seen,
        (
            false,
            true,
            false,
            false,
            Some(b"added by layer 2".to_vec()),
            true
        )
    );
}

#[test]
fn second_pull_of_the_same_layers_downloads_nothing() {
    let reg = TestRegistry::start();
    let pushed = reg.push_image("test/dedup", "a", &test_layers(), &test_config(), false);
    // a second image sharing the bottom layer
    let top = gzip(&Tar::new().file("only-in-b", b"b").finish(), 6);
    let layers_b = vec![test_layers().remove(0), top];
    let pushed_b = reg.push_image("test/dedup", "b", &layers_b, &test_config(), false);
    assert_eq!(pushed.layers[0], pushed_b.layers[0]);
    let scratch = Scratch::new("dedup");
    let store = scratch.0.join("layers");
    let opts = PullOptions::default();
    let a = pull_logged(&opts, &format!("{}/test/dedup:a", reg.host()), &store)
        .0
        .unwrap();
    assert!(a.layers.iter().all(|l| l.downloaded));
    let before = fs::metadata(store.join(&pushed.layers[0])).unwrap().ino();

    // the registry no longer has the bytes of image a's layers: any download would fail
    for d in &pushed.layers {
        fs::remove_file(reg.blob_data(d)).unwrap();
    }
    let (again, log) = pull_logged(&opts, &format!("{}/test/dedup:a", reg.host()), &store);
    let again = again.unwrap_or_else(|e| panic!("second pull downloaded something: {e}"));
    assert!(again.layers.iter().all(|l| !l.downloaded));
    assert_eq!(
        log.iter().filter(|l| l.contains("already present")).count(),
        2,
        "{log:?}"
    );
    // image b shares the bottom layer: only its own top layer is fetched
    let b = pull_logged(&opts, &format!("{}/test/dedup:b", reg.host()), &store)
        .0
        .unwrap();
    assert_eq!(
        b.layers.iter().map(|l| l.downloaded).collect::<Vec<_>>(),
        [false, true]
    );
    assert_eq!(
        fs::metadata(store.join(&pushed.layers[0])).unwrap().ino(),
        before
    );
    assert_eq!(
        store_entries(&store).len(),
        3,
        "three distinct layers stored once each"
    );
}

#[test]
fn docker_hub_short_name_goes_to_the_mirror_and_picks_linux_amd64() {
    let reg = TestRegistry::start();
    // an index with an arm64 image listed first and the amd64 one second
    let arm = reg.push_image(
        "library/bbmirror",
        "arm64",
        &[gzip(&Tar::new().file("arch", b"arm64").finish(), 6)],
        &config_json("arm64", &[], "", "", &[]),
        false,
    );
    let amd = reg.push_image(
        "library/bbmirror",
        "amd64",
        &[gzip(
            &busybox_layer(|t| {
                t.file("arch", b"amd64");
            }),
            6,
        )],
        &config_json("amd64", &["A=1"], "/", "", &["sh"]),
        false,
    );
    let index = reg.push_index(
        "library/bbmirror",
        "1",
        &[
            (
                arm.manifest_digest.clone(),
                reg.manifest_size("library/bbmirror", &arm.manifest_digest),
                "arm64",
            ),
            (
                amd.manifest_digest.clone(),
                reg.manifest_size("library/bbmirror", &amd.manifest_digest),
                "amd64",
            ),
        ],
    );
    let scratch = Scratch::new("mirror");
    let store = scratch.0.join("layers");
    let mirror = url::Url::parse(&reg.url()).unwrap();
    let opts = PullOptions {
        mirror: Some(mirror.clone()),
    };
    let (r, log) = pull_logged(&opts, "bbmirror:1", &store);
    let img = r.unwrap_or_else(|e| panic!("pull through the mirror: {e}; log {log:?}"));
    assert_eq!(img.reference, "docker.io/library/bbmirror:1");
    assert_eq!(img.source, reg.url());
    assert_eq!(img.digest, index);
    assert_eq!(img.manifest_digest, amd.manifest_digest);
    assert_eq!(img.layers.len(), 1);
    assert_eq!(fs::read(img.layers[0].dir.join("arch")).unwrap(), b"amd64");
    assert_eq!(img.config.env, ["A=1"]);

    // by digest, with the docker.io spelling
    let (r, _) = pull_logged(
        &opts,
        &format!("docker.io/library/bbmirror@{index}"),
        &store,
    );
    assert_eq!(r.unwrap().manifest_digest, amd.manifest_digest);

    // a mirror that is down: the pull falls back to Docker Hub (unreachable from here, or
    // without this image), and says so
    let down = PullOptions {
        mirror: Some(url::Url::parse(&format!("http://127.0.0.1:{}", free_port())).unwrap()),
    };
    let (r, log) = pull_logged(&down, "bbmirror:1", &scratch.0.join("other"));
    let e = r.unwrap_err();
    assert!(e.to_string().contains("registry-1.docker.io"), "{e}");
    assert!(
        log.iter().any(|l| l.contains("trying Docker Hub")),
        "{log:?}"
    );

    // an index without linux/amd64
    reg.push_index(
        "library/bbmirror",
        "armonly",
        &[(
            arm.manifest_digest.clone(),
            reg.manifest_size("library/bbmirror", &arm.manifest_digest),
            "arm64",
        )],
    );
    let (r, _) = pull_logged(&opts, "bbmirror:armonly", &store);
    match r {
        Err(OciError::NoPlatform { available, .. }) => assert_eq!(available, "linux/arm64"),
        other => panic!("expected NoPlatform, got {other:?}"),
    }
}

#[test]
fn corrupt_blob_fails_with_a_clear_error_and_leaves_no_layer() {
    let reg = TestRegistry::start();
    let pushed = reg.push_image("test/corrupt", "1", &test_layers(), &test_config(), true);
    // the registry serves other bytes, of the same length, under layer 2's digest
    let data = reg.blob_data(&pushed.layers[1]);
    let mut bytes = fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&data, &bytes).unwrap();

    let scratch = Scratch::new("corrupt");
    let store = scratch.0.join("layers");
    let (r, _) = pull_logged(
        &PullOptions::default(),
        &format!("{}/test/corrupt:1", reg.host()),
        &store,
    );
    match r {
        Err(OciError::DigestMismatch { what, expected, .. }) => {
            assert!(what.contains(&pushed.layers[1]), "{what}");
            assert!(expected.starts_with(&pushed.layers[1]));
        }
        other => panic!("expected a digest mismatch, got {other:?}"),
    }
    // the good bottom layer is complete and stays; nothing of the corrupt one, no temp files
    assert_eq!(store_entries(&store), vec![pushed.layers[0].clone()]);
}

#[test]
fn hostile_layers_write_nothing_outside_the_layer() {
    let reg = TestRegistry::start();
    let scratch = Scratch::new("hostile");
    let store = scratch.0.join("layers");
    let outside = scratch.0.join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("victim"), b"original").unwrap();
    let out = outside.display().to_string();
    let dir = tar::EntryType::Directory;
    let file = tar::EntryType::Regular;
    let sym = tar::EntryType::Symlink;

    let mut cases: Vec<(&str, Tar)> = Vec::new();
    let mut t = Tar::new();
    t.raw(b"../escape", file, b"", b"pwned");
    cases.push(("dot-dot", t));
    let mut t = Tar::new();
    t.raw(b"a/", dir, b"", b"")
        .raw(b"a/../../../escape", file, b"", b"pwned");
    cases.push(("nested dot-dot", t));
    let mut t = Tar::new();
    t.raw(b"lnk", sym, out.as_bytes(), b"")
        .raw(b"lnk/pwned", file, b"", b"pwned");
    cases.push(("absolute symlink parent", t));
    let mut t = Tar::new();
    t.raw(b"lnk", sym, b"../../../../../../../../../../..", b"")
        .raw(format!("lnk{out}/pwned").as_bytes(), file, b"", b"pwned");
    cases.push(("relative symlink parent", t));
    let mut t = Tar::new();
    t.raw(b"lnk", sym, out.as_bytes(), b"")
        .raw(b"lnk/.wh.victim", file, b"", b"");
    cases.push(("whiteout through a symlink", t));
    let mut t = Tar::new();
    t.raw(b"lnk", sym, out.as_bytes(), b"")
        .raw(b"lnk/.wh..wh..opq", file, b"", b"");
    cases.push(("opaque marker through a symlink", t));
    let mut t = Tar::new();
    t.raw(b"hl", tar::EntryType::Link, b"../../outside/victim", b"");
    cases.push(("hard link out", t));
    let mut t = Tar::new();
    t.raw(b"lnk", sym, out.as_bytes(), b"")
        .raw(b"hl", tar::EntryType::Link, b"lnk/victim", b"");
    cases.push(("hard link through a symlink", t));
    let mut t = Tar::new();
    t.raw(
        b"hl",
        tar::EntryType::Link,
        format!("{out}/victim").as_bytes(),
        b"",
    );
    cases.push(("hard link to an absolute path", t));

    for (i, (name, mut t)) in cases.into_iter().enumerate() {
        let repo = format!("hostile/case{i}");
        let pushed = reg.push_image(&repo, "1", &[gzip(&t.finish(), 6)], &test_config(), false);
        let (r, _) = pull_logged(
            &PullOptions::default(),
            &format!("{}/{repo}:1", reg.host()),
            &store,
        );
        match r {
            Err(OciError::UnsafeLayer { digest, .. }) => {
                assert_eq!(digest, pushed.layers[0], "{name}")
            }
            other => panic!("{name}: expected UnsafeLayer, got {other:?}"),
        }
        assert!(
            store_entries(&store).is_empty(),
            "{name}: {:?}",
            store_entries(&store)
        );
    }
    let written: Vec<_> = names_under(&scratch.0)
        .into_iter()
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n == "escape" || n == "pwned" || n == "hl"
        })
        .collect();
    assert!(written.is_empty(), "written outside: {written:?}");
    assert_eq!(
        names_under(&outside),
        vec![outside.join("victim")],
        "nothing new in the outside directory"
    );
    assert_eq!(fs::read(outside.join("victim")).unwrap(), b"original");
    let victim = fs::symlink_metadata(outside.join("victim")).unwrap();
    assert_eq!(victim.nlink(), 1, "no hard link to the outside file");
    assert_eq!(
        sys::lgetxattr(&outside, "trusted.overlay.opaque").unwrap(),
        None
    );

    // absolute paths land inside the layer; device nodes are not created
    let mut t = Tar::new();
    t.raw(b"/abs-file", file, b"", b"inside")
        .device("dev-sda", 8, 0)
        .device("dev-null", 1, 3);
    let pushed = reg.push_image(
        "hostile/ok",
        "1",
        &[gzip(&t.finish(), 6)],
        &test_config(),
        false,
    );
    let (r, log) = pull_logged(
        &PullOptions::default(),
        &format!("{}/hostile/ok:1", reg.host()),
        &store,
    );
    let img = r.unwrap();
    let layer = &img.layers[0].dir;
    assert_eq!(img.layers[0].digest, pushed.layers[0]);
    assert_eq!(fs::read(layer.join("abs-file")).unwrap(), b"inside");
    assert!(!layer.join("dev-sda").exists() && !layer.join("dev-null").exists());
    assert!(
        log.iter().any(|l| l.contains("2 device nodes not created")),
        "{log:?}"
    );
}

#[test]
fn unreachable_registry_unknown_tag_and_bad_reference_are_clear_errors() {
    let reg = TestRegistry::start();
    reg.push_image(
        "test/known",
        "1",
        &test_layers()[..1],
        &test_config(),
        false,
    );
    let scratch = Scratch::new("errors");
    let store = scratch.0.join("layers");
    let opts = PullOptions::default();

    let port = free_port();
    let e = pull_logged(&opts, &format!("127.0.0.1:{port}/test/known:1"), &store)
        .0
        .unwrap_err();
    assert!(
        matches!(e, OciError::Unreachable { ref registry, .. } if *registry == format!("127.0.0.1:{port}")),
        "{e:?}"
    );
    assert!(
        e.to_string().starts_with(&format!(
            "cannot reach registry 127.0.0.1:{port}: cannot connect"
        )),
        "{e}"
    );

    let e = pull_logged(&opts, &format!("{}/test/known:nope", reg.host()), &store)
        .0
        .unwrap_err();
    assert!(matches!(e, OciError::NotFound { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!("manifest nope not found in {}/test/known", reg.host())
    );
    let e = pull_logged(&opts, &format!("{}/test/unknown:1", reg.host()), &store)
        .0
        .unwrap_err();
    assert!(matches!(e, OciError::NotFound { .. }), "{e:?}");

    let e = pull_logged(&opts, "Not A Reference", &store).0.unwrap_err();
    assert!(matches!(e, OciError::BadReference { .. }), "{e:?}");
    assert!(store_entries(&store).is_empty());
}
