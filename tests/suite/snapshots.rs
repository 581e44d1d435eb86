//! Snapshots end to end: capture, forks from a snapshot, chains, idempotency, deletes while
//! in use, restarts, quotas, errors.

use std::time::Duration;

use superserve::local::LocalServer;
use superserve::{CreateOptions, Error, SnapshotKind, SnapshotOptions, SnapshotStatus};

use crate::common;
use crate::dual;
use crate::flavor::{Sandbox, Snapshot};

/// Runs `cmd` with `sh -c`, asserts it succeeded, returns its stdout trimmed.
#[dual]
async fn ok(sb: &Sandbox, cmd: &str) -> String {
    let r = sb.commands().run(cmd).await.unwrap();
    assert_eq!(r.exit_code, 0, "{cmd}: {r:?}");
    r.stdout.trim().to_owned()
}

/// Creates a sandbox from `snap`.
#[dual]
async fn fork(target: &impl common::SdkConfig, name: &str, snap: &Snapshot) -> Sandbox {
    Sandbox::create_with_config(
        &target.sdk_config(),
        CreateOptions::new(name).from_snapshot(snap),
    )
    .await
    .unwrap_or_else(|e| panic!("create {name} from {}: {e}", snap.id()))
}

/// What the snapshot-time state looks like from inside a sandbox.
const STATE: &str = "cat /opt/snap/kept; cat /opt/snap/deleted; \
    test -e /opt/snap/after && echo after-exists; snaptool; stat -c %u:%g /opt/snap/owned; \
    echo env=$SNAP_ENV";

#[dual]
pub async fn snapshot_boots_independent_forks_with_the_snapshot_time_state() {
    let target = common::target();
    let config = common::config(&target);
    let sb = Sandbox::create_with_config(
        &config,
        CreateOptions::new("snap-src").env_var("SNAP_ENV", "one"),
    )
    .await
    .unwrap();
    // files, an "installed" program (in /usr, the other overlay), a file of another user
    ok(
        &sb,
        "mkdir -p /opt/snap /usr/local/bin && echo kept-v1 > /opt/snap/kept \
         && echo doomed > /opt/snap/deleted && touch /opt/snap/owned \
         && chown 1000:1000 /opt/snap/owned \
         && printf '#!/bin/sh\\necho snaptool-works\\n' > /usr/local/bin/snaptool \
         && chmod +x /usr/local/bin/snaptool",
    )
    .await;
    // a process that keeps running across the capture
    ok(&sb, "nohup sleep 600 >/dev/null 2>&1 & echo started").await;
    let snap = sb
        .snapshot(SnapshotOptions::new().name("first"))
        .await
        .unwrap();
    assert_eq!(snap.status(), &SnapshotStatus::Ready);
    assert_eq!(snap.name(), Some("first"));
    assert_eq!(snap.info().sandbox_id, sb.id());
    if target.local().is_some() {
        // processes and memory are not captured, and the answer says so
        assert_eq!(snap.info().kind, SnapshotKind::Fs);
    }
    // the source keeps running (its process too) and changes after the snapshot
    let got = ok(&sb, "pgrep -x sleep | wc -l").await;
    assert_eq!(got, "1");
    ok(
        &sb,
        "echo kept-v2 > /opt/snap/kept && rm /opt/snap/deleted && echo x > /opt/snap/after \
         && rm /usr/local/bin/snaptool",
    )
    .await;

    let a = fork(&target, "snap-fork-a", &snap).await;
    let b = fork(&target, "snap-fork-b", &snap).await;
    let expected = "kept-v1\ndoomed\nsnaptool-works\n1000:1000\nenv=one";
    let got = ok(&a, STATE).await;
    assert_eq!(got, expected);
    let got = ok(&b, STATE).await;
    assert_eq!(got, expected);
    let info = a.get_info().await.unwrap();
    assert_eq!(info.source_snapshot_id.as_deref(), Some(snap.id()));
    // no process came along
    let got = ok(&a, "pgrep -x sleep | wc -l").await;
    assert_eq!(got, "0");

    // independent of each other and of the source
    ok(&a, "echo from-a > /opt/snap/kept && rm /opt/snap/owned").await;
    let got = ok(&b, "cat /opt/snap/kept; ls /opt/snap/owned").await;
    assert_eq!(got, "kept-v1\n/opt/snap/owned");
    let got = ok(&sb, "cat /opt/snap/kept").await;
    assert_eq!(got, "kept-v2");
    let got = ok(&a, "cat /opt/snap/kept").await;
    assert_eq!(got, "from-a");

    let listed = sb.snapshots(None, None).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, snap.id());
    for s in [a, b, sb] {
        s.kill().await.unwrap();
    }
    // a deleted sandbox's snapshots are still listed and usable
    let listed = Snapshot::list_with_config(&config, &snap.info().sandbox_id, None, None)
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    let c = fork(&target, "snap-fork-c", &snap).await;
    let got = ok(&c, "cat /opt/snap/kept").await;
    assert_eq!(got, "kept-v1");
    c.kill().await.unwrap();
    snap.delete().await.unwrap();
}

#[dual]
pub async fn snapshot_chains_and_deletes_while_in_use() {
    let target = common::target();
    let config = common::config(&target);
    let sb = Sandbox::create_with_config(&config, CreateOptions::new("chain-src"))
        .await
        .unwrap();
    ok(&sb, "echo one > /opt/a").await;
    let first = sb.snapshot(SnapshotOptions::new()).await.unwrap();
    let mid = fork(&target, "chain-mid", &first).await;
    ok(
        &mid,
        "echo two > /opt/b && rm /opt/a && echo one-again > /opt/a2",
    )
    .await;
    // a paused sandbox can be captured too
    mid.pause().await.unwrap();
    let second = mid.snapshot(SnapshotOptions::new()).await.unwrap();
    assert_eq!(
        second.info().parent_snapshot_id.as_deref(),
        Some(first.id())
    );
    mid.resume().await.unwrap();
    let leaf = fork(&target, "chain-leaf", &second).await;
    let state = "ls /opt; cat /opt/b /opt/a2";
    let got = ok(&leaf, state).await;
    assert_eq!(got, "a2\nb\ntwo\none-again");

    // deleting the first snapshot keeps what the second one and `mid` build on
    first.delete().await.unwrap();
    let got = Snapshot::get_with_config(&config, first.id()).await;
    assert!(matches!(got, Err(Error::NotFound(_))), "{got:?}");
    Snapshot::delete_by_id_with_config(&config, first.id())
        .await
        .unwrap();
    let leaf2 = fork(&target, "chain-leaf2", &second).await;
    let got = ok(&leaf2, state).await;
    assert_eq!(got, "a2\nb\ntwo\none-again");
    second.delete().await.unwrap();
    // the sandboxes made from them keep working, a restart of their runtime included
    leaf.pause().await.unwrap();
    leaf.resume().await.unwrap();
    let got = ok(&leaf, state).await;
    assert_eq!(got, "a2\nb\ntwo\none-again");
    let got = ok(&mid, "ls /opt").await;
    assert_eq!(got, "a2\nb");
    for s in [sb, mid, leaf, leaf2] {
        s.kill().await.unwrap();
    }
}

#[dual]
pub async fn snapshot_idempotency_key_rename_and_errors() {
    let target = common::target();
    let config = common::config(&target);
    let sb = Sandbox::create_with_config(&config, CreateOptions::new("snap-errs"))
        .await
        .unwrap();
    let one = sb
        .snapshot(SnapshotOptions::new().idempotency_key("key-1"))
        .await
        .unwrap();
    let again = sb
        .snapshot(SnapshotOptions::new().idempotency_key("key-1"))
        .await
        .unwrap();
    assert_eq!(again.id(), one.id(), "the same key is the same snapshot");
    let other = sb
        .snapshot(SnapshotOptions::new().idempotency_key("key-2"))
        .await
        .unwrap();
    assert_ne!(other.id(), one.id());
    let all = sb.snapshots(None, None).await.unwrap();
    assert_eq!(all.len(), 2);
    let page = sb.snapshots(Some(1), Some(1)).await.unwrap();
    assert_eq!(page.len(), 1);

    let renamed = one.rename("renamed").await.unwrap();
    assert_eq!(renamed.name(), Some("renamed"));
    let fetched = Snapshot::get_with_config(&config, one.id()).await.unwrap();
    assert_eq!(fetched.name(), Some("renamed"));
    // bad names are refused before anything is sent
    let empty = one.rename("").await;
    assert!(
        matches!(empty, Err(Error::InvalidInput { .. })),
        "{empty:?}"
    );
    let control = sb.snapshot(SnapshotOptions::new().name("a\u{7}b")).await;
    assert!(
        matches!(control, Err(Error::InvalidInput { .. })),
        "{control:?}"
    );

    // unknown ids
    let unknown = Snapshot::get_with_config(&config, "00000000-0000-4000-8000-000000000000").await;
    assert!(matches!(unknown, Err(Error::NotFound(_))), "{unknown:?}");
    let missing = Sandbox::create_with_config(
        &config,
        CreateOptions::new("from-nothing").from_snapshot("00000000-0000-4000-8000-000000000000"),
    )
    .await;
    assert!(matches!(missing, Err(Error::NotFound(_))), "{missing:?}");

    // a snapshot of a deleted sandbox
    let second_handle = Sandbox::connect_with_config(&config, sb.id())
        .await
        .unwrap();
    sb.kill().await.unwrap();
    let gone = second_handle.snapshot(SnapshotOptions::new()).await;
    assert!(matches!(gone, Err(Error::NotFound(_))), "{gone:?}");
    for s in [one, other] {
        s.delete().await.unwrap();
    }
}

/// The backend checks names itself too (a client that skips the SDK's check).
#[dual]
pub async fn snapshot_bad_bodies_are_refused_by_the_backend() {
    local_only!("raw requests to the local backend");
    let server = common::server();
    let sb = crate::suite::make(&server, "snap-raw").await;
    let addr = common::authority(server.base_url());
    let post = |body: &str| {
        common::raw_http(
            &addr,
            &format!(
                "POST /sandboxes/{}/snapshot HTTP/1.1\r\nhost: x\r\nx-api-key: {}\r\ncontent-type: application/json",
                sb.id(),
                server.api_key()
            ),
            body.as_bytes(),
            Duration::from_secs(30),
        )
    };
    for bad in [
        r#"{"name":""}"#,
        r#"{"name":"a\u0001b"}"#,
        r#"{"kind":"memory-only"}"#,
        r#"{"idempotency_key":""}"#,
        r#"{"unknown":1}"#,
        "[1]",
    ] {
        let (status, text) = post(bad);
        assert_eq!(status, 400, "{bad}: {text}");
        assert!(text.contains("bad_request"), "{text}");
    }
    let none = sb.snapshots(None, None).await.unwrap();
    assert!(none.is_empty());
    let (status, text) = post(r#"{"kind":"mem+fs","idempotency_key":"k"}"#);
    assert_eq!(status, 201, "{text}");
    let (status, _) = post(r#"{"kind":"mem+fs","idempotency_key":"k"}"#);
    assert_eq!(status, 200, "the same key answers the existing snapshot");
    sb.kill().await.unwrap();
}

#[dual]
pub async fn snapshots_survive_a_restart() {
    local_only!("restarts of the local backend");
    let dir = common::temp_path("superserve-snap-restart");
    let start = || LocalServer::builder().data_dir(&dir).start().unwrap();
    let (snap_id, fork_id);
    {
        let server = start();
        let config = common::config(&server);
        let sb = Sandbox::create_with_config(&config, CreateOptions::new("persist-src"))
            .await
            .unwrap();
        ok(&sb, "echo persisted > /opt/p").await;
        let snap = sb
            .snapshot(SnapshotOptions::new().name("kept"))
            .await
            .unwrap();
        let f = fork(&server, "persist-fork", &snap).await;
        ok(&f, "echo own >> /opt/p").await;
        // a snapshot whose layer only the fork keeps alive
        let doomed = sb.snapshot(SnapshotOptions::new()).await.unwrap();
        let g = fork(&server, "persist-fork2", &doomed).await;
        doomed.delete().await.unwrap();
        sb.kill().await.unwrap();
        snap_id = snap.id().to_owned();
        fork_id = (f.id().to_owned(), g.id().to_owned());
        server.shutdown();
    }
    let server = start();
    let config = common::config(&server);
    let snap = Snapshot::get_with_config(&config, &snap_id).await.unwrap();
    assert_eq!(snap.status(), &SnapshotStatus::Ready);
    assert_eq!(snap.name(), Some("kept"));
    let f = Sandbox::connect_with_config(&config, &fork_id.0)
        .await
        .unwrap();
    let got = ok(&f, "cat /opt/p").await;
    assert_eq!(got, "persisted\nown");
    let g = Sandbox::connect_with_config(&config, &fork_id.1)
        .await
        .unwrap();
    let got = ok(&g, "cat /opt/p").await;
    assert_eq!(got, "persisted");
    let h = fork(&server, "after-restart", &snap).await;
    let got = ok(&h, "cat /opt/p").await;
    assert_eq!(got, "persisted");
    for s in [f, g, h] {
        s.kill().await.unwrap();
    }
    snap.delete().await.unwrap();
    server.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A sandbox booted from a snapshot counts only its own writes against its disk.
#[dual]
pub async fn a_fork_counts_only_its_own_writes() {
    local_only!("a small sandbox disk (LocalServer builder)");
    let server = LocalServer::builder().sandbox_disk_mib(96).start().unwrap();
    let sb = crate::suite::make(&server, "quota-src").await;
    let fill = "dd if=/dev/urandom of=/opt/big bs=1M count=60 2>&1 && sync && echo done";
    let filled = ok(&sb, fill).await;
    assert!(filled.ends_with("done"));
    let snap = sb.snapshot(SnapshotOptions::new()).await.unwrap();
    let f = fork(&server, "quota-fork", &snap).await;
    // 60 MiB from the snapshot plus 60 MiB of its own would not fit on one 96 MiB disk
    let own = ok(
        &f,
        "dd if=/dev/urandom of=/opt/big2 bs=1M count=60 2>&1 && sync && echo done",
    )
    .await;
    assert!(own.ends_with("done"), "{own}");
    // its own disk still ends where it ends
    let over = f
        .commands()
        .run("dd if=/dev/zero of=/opt/big3 bs=1M count=80 2>&1")
        .await
        .unwrap();
    assert_ne!(over.exit_code, 0, "{over:?}");
    assert!(over.stdout.contains("No space left"), "{over:?}");
    for s in [sb, f] {
        s.kill().await.unwrap();
    }
}

/// A fork gets the snapshot's configuration (resources, env, network rules, secret bindings
/// with stand-ins of its own); what the create request sets wins.
#[dual]
pub async fn a_fork_gets_the_captured_configuration() {
    local_only!("a team secret of the local backend");
    let server = common::server();
    let config = common::config(&server);
    crate::flavor::Secret::create_with_config(
        &config,
        superserve::SecretCreateOptions::new("snap-secret", "sk-real-value").provider("anthropic"),
    )
    .await
    .unwrap();
    let net = superserve::NetworkConfig::new()
        .allow_out(["example.com"])
        .deny_out(["0.0.0.0/0"]);
    let sb = Sandbox::create_with_config(
        &config,
        CreateOptions::new("cfg-src")
            .env_var("KEEP", "captured")
            .env_var("OVERRIDE", "captured")
            .network(net.clone())
            .secret("ANTHROPIC_API_KEY", "snap-secret"),
    )
    .await
    .unwrap();
    let snap = sb.snapshot(SnapshotOptions::new()).await.unwrap();
    let fork = Sandbox::create_with_config(
        &config,
        CreateOptions::new("cfg-fork")
            .from_snapshot(&snap)
            .env_var("OVERRIDE", "request"),
    )
    .await
    .unwrap();
    let info = fork.get_info().await.unwrap();
    assert_eq!(info.network.as_ref(), Some(&net));
    let bindings = info.secrets.unwrap_or_default();
    assert_eq!(bindings.len(), 1, "{bindings:?}");
    assert_eq!(bindings[0].env_key, "ANTHROPIC_API_KEY");
    assert_eq!(bindings[0].secret_name, "snap-secret");
    let got = ok(&fork, "echo $KEEP $OVERRIDE; echo $ANTHROPIC_API_KEY").await;
    let src = ok(&sb, "echo $ANTHROPIC_API_KEY").await;
    let lines: Vec<&str> = got.lines().collect();
    assert_eq!(lines[0], "captured request");
    // a stand-in, never the value, and not the source's stand-in
    assert!(
        !lines[1].is_empty() && !lines[1].contains("sk-real-value"),
        "{got}"
    );
    assert_ne!(lines[1], src);
    for s in [sb, fork] {
        s.kill().await.unwrap();
    }
}

/// A capture that has to wait (here for a start that holds the sandbox's lifecycle) is
/// answered `202` with the snapshot `creating`, and becomes ready in the background.
#[dual]
pub async fn a_slow_capture_answers_202_creating_then_becomes_ready() {
    local_only!("raw requests and a template of the local backend");
    let server = common::server();
    let config = common::config(&server);
    // sandboxes of this template are `starting` until their ready_cmd succeeds (~12 s)
    let t = crate::flavor::Template::create_with_config(
        &config,
        superserve::TemplateOptions::new("slow-start")
            .start_cmd("sleep 12; touch /run/started-late")
            .ready_cmd("test -f /run/started-late"),
    )
    .await
    .unwrap();
    t.wait_until_ready(superserve::TemplateWaitOptions::new().timeout(Duration::from_secs(120)))
        .await
        .unwrap();
    let addr = common::authority(server.base_url());
    let key = server.api_key().to_owned();
    let head = |method: &str, path: &str| {
        format!(
            "{method} {path} HTTP/1.1\r\nhost: x\r\nx-api-key: {key}\r\ncontent-type: application/json"
        )
    };
    let create = {
        let (addr, req) = (addr.clone(), head("POST", "/sandboxes"));
        std::thread::spawn(move || {
            common::raw_http(
                &addr,
                &req,
                br#"{"name":"slow-start-sb","from_template":"slow-start"}"#,
                Duration::from_secs(120),
            )
        })
    };
    let mut id = None;
    for _ in 0..200 {
        let list = Sandbox::list_with_config(&config, superserve::ListOptions::new())
            .await
            .unwrap();
        if let Some(s) = list.iter().find(|s| s.name == "slow-start-sb") {
            id = Some(s.id.clone());
            break;
        }
        crate::flavor::sleep(Duration::from_millis(50)).await;
    }
    let id = id.expect("the sandbox is listed while it starts");
    let (status, text) = common::raw_http(
        &addr,
        &head("POST", &format!("/sandboxes/{id}/snapshot")),
        br#"{"kind":"mem+fs","idempotency_key":"slow"}"#,
        Duration::from_secs(60),
    );
    assert_eq!(status, 202, "{text}");
    assert!(text.contains(r#""status":"creating""#), "{text}");
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    let sid = serde_json::from_str::<serde_json::Value>(body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let snap = Snapshot::get_with_config(&config, &sid).await.unwrap();
    let ready = snap
        .wait_until_ready(Duration::from_secs(120), Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(ready.status(), &SnapshotStatus::Ready);
    let (created, text) = create.join().unwrap();
    assert_eq!(created, 201, "{text}");
    let sb = Sandbox::connect_with_config(&config, &id).await.unwrap();
    sb.kill().await.unwrap();
    snap.delete().await.unwrap();
    t.delete().await.unwrap();
}
