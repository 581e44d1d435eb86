//! Hostile clients of the backend's listeners, and hostile input to its handlers: the server
//! keeps answering, never hangs, never panics, and maps system errors to clear 4xx answers.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use superserve::local::LocalServer;
use superserve::{CreateOptions, Error, RunOptions};

use crate::common::{self, authority, raw_http, Backend};
use crate::dual;
use crate::flavor::Sandbox;

/// Long enough for any answer on a loaded machine; a hang runs into it.
const WAIT: Duration = Duration::from_secs(60);

/// Opens up to `n` connections to `addr`: every fourth one starts a request head and never
/// finishes it (slowloris), the others send nothing. Stops early when the listener stops
/// accepting (its backlog is full).
fn hold_connections(addr: &str, n: usize) -> Vec<TcpStream> {
    let sock: std::net::SocketAddr = addr.parse().unwrap();
    let mut held = Vec::new();
    for i in 0..n {
        let Ok(mut s) = TcpStream::connect_timeout(&sock, Duration::from_millis(300)) else {
            break;
        };
        if i % 4 == 0 {
            let _ = s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\nx-slow: ");
        }
        held.push(s);
    }
    held
}

/// Hundreds of idle and slowloris connections on both listeners of a backend that may open
/// only 256 descriptors, and a sandbox holding hundreds of egress connections: health, create
/// and exec still answer.
#[dual]
pub async fn idle_and_slowloris_clients_cannot_starve_the_backend() {
    local_only!("the local backend (its egress, listeners and data directory)");
    let up = common::Upstream::start();
    let backend = Backend::start_with_fd_limit(
        256,
        &[
            "--allow-private",
            "10.88.0.0/16",
            "--dns-host",
            &format!("hog.upstream.test={}", up.ip),
        ],
    );
    let config = backend.config();
    let hog = Sandbox::create_with_config(&config, CreateOptions::new("hog"))
        .await
        .unwrap();
    // the sandbox keeps 300 connections through the egress proxy open in the background
    let r = hog
        .commands()
        .run(
            "bash -c 'for i in $(seq 300); do exec {fd}<>/dev/tcp/hog.upstream.test/80; done; \
             sleep 600' >/dev/null 2>&1 & echo started",
        )
        .await
        .unwrap();
    assert_eq!(r.stdout.trim(), "started", "{r:?}");
    let mut held = hold_connections(&authority(&backend.base_url), 400);
    held.extend(hold_connections(&authority(&backend.sandbox_url), 400));
    assert!(held.len() >= 200, "the attack itself could not start");

    let (status, resp) = raw_http(
        &authority(&backend.base_url),
        "GET /health HTTP/1.1\r\nhost: x",
        b"",
        WAIT,
    );
    assert!(
        status == 200 || status == 503,
        "health neither answered nor shed: {resp:?}"
    );
    let sb = Sandbox::create_with_config(&config, CreateOptions::new("survivor"))
        .await
        .unwrap_or_else(|e| panic!("create while under attack: {e}"));
    let r = sb
        .commands()
        .run("echo alive")
        .await
        .unwrap_or_else(|e| panic!("exec while under attack: {e}"));
    assert_eq!(r.stdout, "alive\n");
    let (status, resp) = raw_http(
        &authority(&backend.base_url),
        "GET /health HTTP/1.1\r\nhost: x",
        b"",
        WAIT,
    );
    assert_eq!(status, 200, "{resp:?}");
    drop(held);
    sb.kill().await.unwrap();
    hog.kill().await.unwrap();
}

/// A listener whose every connection slot holds a request in progress sheds a new request at
/// once with 503 and `Retry-After`; the other listener is unaffected, and the listener
/// answers again once the slots free up.
#[dual]
pub async fn a_full_listener_sheds_with_a_fast_503() {
    local_only!("the local backend (its egress, listeners and data directory)");
    let server = LocalServer::builder().max_connections(3).start().unwrap();
    let sb = Sandbox::create_with_config(&common::config(&server), CreateOptions::new("busy"))
        .await
        .unwrap();
    let token = common::access_token(server.base_url(), server.api_key(), sb.id());
    let data = authority(server.sandbox_url());
    // three streamed commands keep the data plane's three slots busy
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(&data).unwrap();
        let body = br#"{"command":"sleep 120"}"#;
        let head = format!(
            "{}\r\ncontent-length: {}\r\n\r\n",
            common::data_request("POST /exec/stream", sb.id(), &token),
            body.len()
        );
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(body).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut first = [0u8; 12];
        std::io::Read::read_exact(&mut s, &mut first).unwrap();
        assert_eq!(&first, b"HTTP/1.1 200");
        streams.push(s);
    }
    let (status, resp) = raw_http(
        &data,
        &common::data_request("POST /exec", sb.id(), &token),
        br#"{"command":"echo shed"}"#,
        WAIT,
    );
    assert_eq!(status, 503, "{resp}");
    assert!(resp.to_ascii_lowercase().contains("retry-after:"), "{resp}");
    let (status, _) = raw_http(
        &authority(server.base_url()),
        "GET /health HTTP/1.1\r\nhost: x",
        b"",
        WAIT,
    );
    assert_eq!(status, 200, "the control plane has slots of its own");
    drop(streams);
    let mut answered = 0;
    for _ in 0..200 {
        let (status, _) = raw_http(
            &data,
            &common::data_request("POST /exec", sb.id(), &token),
            br#"{"command":"echo back"}"#,
            WAIT,
        );
        if status == 200 {
            answered = status;
            break;
        }
        crate::flavor::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(answered, 200, "the data plane never answered again");
    sb.kill().await.unwrap();
}

/// The sandboxes that have a cgroup of the server's instance, in any cgroup v1 hierarchy.
fn sandboxes_with_cgroups(server: &LocalServer) -> std::collections::BTreeSet<String> {
    let instance = std::fs::read_to_string(server.data_dir().join(".instance")).unwrap();
    std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .flatten()
        .filter_map(|h| {
            std::fs::read_dir(h.path().join("superserve-local").join(instance.trim())).ok()
        })
        .flat_map(|g| g.flatten())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Clients that send a create, or a delete, and hang up before the answer, at every moment
/// of it: each sandbox is made whole or not at all, and deleted whole. None is left half made
/// ("starting" for ever, or holding a cgroup that no sandbox owns), every one that was made
/// works, and the deletes leave no cgroup behind.
#[dual]
pub async fn clients_that_hang_up_leave_nothing_half_made() {
    local_only!("the local backend (its records and cgroups)");
    let server = LocalServer::start().unwrap();
    let config = common::config(&server);
    let control = authority(server.base_url());
    for i in 0..16u64 {
        // hang up 0 to 15 ms into the create: before, during and after its steps
        let body = format!(r#"{{"name":"hangup-{i}"}}"#);
        let request = format!(
            "POST /sandboxes HTTP/1.1\r\nhost: x\r\nx-api-key: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            server.api_key(),
            body.len()
        );
        common::send_and_hang_up(&control, &request, Duration::from_millis(i));
    }
    // every create has ended (made whole, or undone) once no sandbox is "starting"
    let mut listed = Vec::new();
    for _ in 0..300 {
        listed = Sandbox::list_with_config(&config, superserve::ListOptions::new())
            .await
            .unwrap();
        if listed
            .iter()
            .all(|i| i.status != superserve::SandboxStatus::Starting)
        {
            break;
        }
        crate::flavor::sleep(Duration::from_millis(100)).await;
    }
    let stuck: Vec<_> = listed
        .iter()
        .filter(|i| i.status != superserve::SandboxStatus::Active)
        .map(|i| (i.name.clone(), i.status.clone()))
        .collect();
    assert!(stuck.is_empty(), "sandboxes left half made: {stuck:?}");
    assert_eq!(
        sandboxes_with_cgroups(&server),
        listed.iter().map(|i| i.id.clone()).collect(),
        "cgroups belong to the sandboxes that exist, none to a create that was undone"
    );
    for info in &listed {
        let sb = Sandbox::connect_with_config(&config, &info.id)
            .await
            .unwrap();
        let r = sb.commands().run("echo whole").await.unwrap();
        assert_eq!(r.stdout, "whole\n", "{}", info.name);
    }
    // deletes whose clients hang up at every moment of the delete
    for (i, info) in listed.iter().enumerate() {
        let request = format!(
            "DELETE /sandboxes/{} HTTP/1.1\r\nhost: x\r\nx-api-key: {}\r\n\r\n",
            info.id,
            server.api_key()
        );
        common::send_and_hang_up(&control, &request, Duration::from_millis(i as u64 % 8));
    }
    // a delete runs to its end or (its request never read) not at all: what is listed
    // is active and owns its cgroup, and nothing else owns one
    let mut listed = Vec::new();
    for _ in 0..300 {
        listed = Sandbox::list_with_config(&config, superserve::ListOptions::new())
            .await
            .unwrap();
        let ids: std::collections::BTreeSet<String> = listed.iter().map(|i| i.id.clone()).collect();
        if sandboxes_with_cgroups(&server) == ids {
            break;
        }
        crate::flavor::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        sandboxes_with_cgroups(&server),
        listed.iter().map(|i| i.id.clone()).collect(),
        "a delete cut by its client left a cgroup without a sandbox"
    );
    for info in &listed {
        assert_eq!(
            info.status,
            superserve::SandboxStatus::Active,
            "{}",
            info.name
        );
        let sb = Sandbox::connect_with_config(&config, &info.id)
            .await
            .unwrap();
        sb.kill().await.unwrap();
    }
    let left = sandboxes_with_cgroups(&server);
    assert!(left.is_empty(), "deleted sandboxes left cgroups: {left:?}");
}

/// Reads from `s` until the server closes the connection (or `WAIT` runs out); returns
/// whether it closed.
fn closed_by_server(s: &mut TcpStream) -> bool {
    use std::io::Read;
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// A connection that never sends a request, one whose request head never ends, and a
/// keep-alive connection left idle after a request are all closed by the server.
#[dual]
pub async fn idle_and_slow_connections_are_closed() {
    local_only!("the local backend (its egress, listeners and data directory)");
    let server = LocalServer::builder()
        .header_read_timeout(Duration::from_secs(1))
        .idle_timeout(Duration::from_secs(2))
        .start()
        .unwrap();
    for addr in [
        authority(server.base_url()),
        authority(server.sandbox_url()),
    ] {
        let mut silent = TcpStream::connect(&addr).unwrap();
        let mut slow = TcpStream::connect(&addr).unwrap();
        slow.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n")
            .unwrap();
        let mut idle = TcpStream::connect(&addr).unwrap();
        idle.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
            .unwrap();
        assert!(
            closed_by_server(&mut silent),
            "{addr}: silent connection kept"
        );
        assert!(
            closed_by_server(&mut slow),
            "{addr}: slowloris connection kept"
        );
        assert!(closed_by_server(&mut idle), "{addr}: idle keep-alive kept");
    }
}

/// Numbers out of range are 400s, never a panic: the command with an absurd timeout is not
/// started at all, and every query and body number is checked.
#[dual]
pub async fn out_of_range_numbers_are_rejected() {
    local_only!("the local backend (its egress, listeners and data directory)");
    let server = common::server();
    let sb = Sandbox::create_with_config(&common::config(&server), CreateOptions::new("numbers"))
        .await
        .unwrap();
    let token = common::access_token(server.base_url(), server.api_key(), sb.id());
    let data = authority(server.sandbox_url());
    let control = authority(server.base_url());
    for timeout in [
        "9223372036854775808",
        "18446744073709551615",
        "604801",
        "-1",
        "1e30",
    ] {
        let body = format!(r#"{{"command":"touch /tmp/ran","timeout_s":{timeout}}}"#);
        for path in ["POST /exec", "POST /exec/stream"] {
            let (status, resp) = raw_http(
                &data,
                &common::data_request(path, sb.id(), &token),
                body.as_bytes(),
                WAIT,
            );
            assert_eq!(status, 400, "{path} timeout_s={timeout}: {resp}");
        }
    }
    let ran = sb
        .commands()
        .run("test -e /tmp/ran && echo ran || echo never")
        .await
        .unwrap();
    assert_eq!(ran.stdout, "never\n", "a refused command was started");
    let key = server.api_key().to_owned();
    let big = "99999999999999999999999";
    for (req, body) in [
        (format!("GET /sandboxes?limit={big}"), String::new()),
        (format!("GET /sandboxes?offset={big}"), String::new()),
        ("GET /sandboxes?limit=-1".to_owned(), String::new()),
        (
            format!("GET /sandboxes/{}/network?limit={big}", sb.id()),
            String::new(),
        ),
        (
            format!(
                "GET /sandboxes/{}/network?since=99999-01-01T00:00:00Z",
                sb.id()
            ),
            String::new(),
        ),
        (
            format!(
                "GET /sandboxes/{}/network?before=c99999999999999999999.1",
                sb.id()
            ),
            String::new(),
        ),
        (
            "POST /sandboxes".to_owned(),
            format!(r#"{{"name":"n","timeout_seconds":{big}}}"#),
        ),
        (
            "POST /sandboxes".to_owned(),
            r#"{"name":"n","auto_delete_seconds":18446744073709551615}"#.to_owned(),
        ),
        (
            format!("PATCH /sandboxes/{}", sb.id()),
            r#"{"timeout_seconds":18446744073709551615}"#.to_owned(),
        ),
        (
            "POST /_local/faults".to_owned(),
            format!(
                r#"{{"method":"GET","path":"/x","fault":{{"type":"rate_limited","retry_after_secs":{big}}}}}"#
            ),
        ),
    ] {
        let (status, resp) = raw_http(
            &control,
            &format!(
                "{req} HTTP/1.1\r\nhost: x\r\nx-api-key: {key}\r\ncontent-type: application/json"
            ),
            body.as_bytes(),
            WAIT,
        );
        assert_eq!(status, 400, "{req} {body}: {resp}");
    }
    // still healthy, and the sandbox still runs commands
    let r = sb.commands().run("echo fine").await.unwrap();
    assert_eq!(r.stdout, "fine\n");
    sb.kill().await.unwrap();
}

/// System errors a client can cause are 4xx answers that say what is wrong.
#[dual]
pub async fn system_errors_are_client_errors() {
    local_only!("the local backend (its egress, listeners and data directory)");
    let server = common::server();
    let sb = Sandbox::create_with_config(&common::config(&server), CreateOptions::new("errnos"))
        .await
        .unwrap();
    let f = sb.files();
    let status = |e: &Error| e.status_code();
    // ENAMETOOLONG: a 300-byte name, a 5000-byte path
    let long_name = format!("/tmp/{}", "n".repeat(300));
    let e = f.write(&long_name, "x").await.unwrap_err();
    assert_eq!(status(&e), Some(400), "{e:?}");
    assert!(e.to_string().contains("too long"), "{e}");
    let long_path = format!("/{}", "d/".repeat(2500));
    let e = f.read(&long_path).await.unwrap_err();
    assert_eq!(status(&e), Some(400), "{e:?}");
    // ENOTDIR on write: a parent is a file
    f.write("/tmp/plain", "x").await.unwrap();
    let e = f.write("/tmp/plain/x", "x").await.unwrap_err();
    assert_eq!(status(&e), Some(400), "{e:?}");
    assert!(e.to_string().contains("not a directory"), "{e}");
    // EISDIR: writing over a directory
    let e = f.write("/tmp", "x").await.unwrap_err();
    assert_eq!(status(&e), Some(400), "{e:?}");
    // ELOOP: a symlink loop
    sb.commands()
        .run("ln -s /tmp/loop-b /tmp/loop-a && ln -s /tmp/loop-a /tmp/loop-b")
        .await
        .unwrap();
    let e = f.read("/tmp/loop-a").await.unwrap_err();
    assert_eq!(status(&e), Some(400), "{e:?}");
    // ETXTBSY: overwriting a program that is running
    let started = sb
        .commands()
        .run(
            "cp /bin/sleep /tmp/busy && (/tmp/busy 120 >/dev/null 2>&1 &); \
             for i in $(seq 200); do for p in /proc/[0-9]*; do \
             [ \"$(readlink $p/exe)\" = /tmp/busy ] && exit 0; done; sleep 0.05; done; exit 1",
        )
        .await
        .unwrap();
    assert_eq!(started.exit_code, 0, "the program never ran: {started:?}");
    let e = f.write("/tmp/busy", "x").await.unwrap_err();
    assert_eq!(status(&e), Some(409), "{e:?}");
    assert!(e.to_string().contains("busy"), "{e}");
    // E2BIG: an environment variable longer than the kernel takes
    let e = sb
        .commands()
        .run_with("true", RunOptions::new().env("BIG", "x".repeat(200 * 1024)))
        .await
        .unwrap_err();
    // a command that cannot start: the same typed error on every path (the JSON one here)
    assert!(matches!(e, superserve::Error::CommandStart { .. }), "{e:?}");
    assert_eq!(e.code(), Some("exec_failed"));
    assert!(e.to_string().contains("too long"), "{e}");
    // the sandbox is fine afterwards
    let r = sb.commands().run("echo ok").await.unwrap();
    assert_eq!(r.stdout, "ok\n");
    sb.kill().await.unwrap();
}

/// A directory nested thousands of levels deep (made inside the sandbox) is refused with a
/// clear 400 instead of exhausting the stack of the backend; entry names longer than the ZIP
/// format allows are refused too; other sandboxes never notice.
#[dual]
pub async fn hostile_directory_trees_cannot_break_zip_downloads() {
    local_only!("the local backend (its egress, listeners and data directory)");
    let server = common::server();
    let config = common::config(&server);
    let bystander = Sandbox::create_with_config(&config, CreateOptions::new("bystander"))
        .await
        .unwrap();
    let r = bystander
        .commands()
        .run("sleep 300 >/dev/null 2>&1 & echo $!")
        .await
        .unwrap();
    let pid = r.stdout.trim().to_owned();
    let sb = Sandbox::create_with_config(&config, CreateOptions::new("deep"))
        .await
        .unwrap();
    let made = sb
        .commands()
        .run(
            "python3 -c \"import os\nos.makedirs('/deep')\nos.chdir('/deep')\n\
             for _ in range(3000):\n    os.mkdir('d'); os.chdir('d')\nopen('f', 'w').write('x')\"",
        )
        .await
        .unwrap();
    assert_eq!(made.exit_code, 0, "{made:?}");
    let e = sb.files().download_dir("/deep").await.unwrap_err();
    assert_eq!(e.status_code(), Some(400), "{e:?}");
    assert!(e.to_string().contains("deeper than"), "{e}");
    // names past 65,535 bytes: 255 levels of 255-byte names, then a file
    let made = sb
        .commands()
        .run(
            "python3 -c \"import os\nos.makedirs('/long')\nos.chdir('/long')\n\
             for _ in range(255):\n    os.mkdir('n' * 255); os.chdir('n' * 255)\n\
             open('f' * 255, 'w').write('x')\"",
        )
        .await
        .unwrap();
    assert_eq!(made.exit_code, 0, "{made:?}");
    let e = sb.files().download_dir("/long").await.unwrap_err();
    assert_eq!(e.status_code(), Some(400), "{e:?}");
    assert!(e.to_string().contains("65535"), "{e}");
    // a shallow directory next to them still zips, and the bystander's process lives on
    sb.files().write("/ok/a.txt", "A").await.unwrap();
    let zip = sb.files().download_dir("/ok").await.unwrap();
    assert!(common::zip_entries(&zip).contains(&"ok/a.txt".to_owned()));
    let alive = bystander
        .commands()
        .run(&format!("kill -0 {pid} && echo alive"))
        .await
        .unwrap();
    assert_eq!(alive.stdout, "alive\n");
    sb.kill().await.unwrap();
    bystander.kill().await.unwrap();
}
