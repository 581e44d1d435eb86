//! Hostile tests of sandbox isolation: a process inside a sandbox (or the host side handling
//! what a sandbox produced) tries an attack, and the test asserts it fails.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use superserve::local::LocalServer;
use superserve::{CreateOptions, RunOptions};

use super::make;
use crate::common;
use crate::dual;
use crate::flavor::Sandbox;

/// Runs a Python program inside the sandbox (the host's `/usr` is the sandbox's, so
/// `python3` is there), returning its stdout; fails the test on a non-zero exit.
#[dual]
async fn python(sb: &Sandbox, program: &str) -> String {
    let quoted = program.replace('\'', "'\\''");
    let r = sb
        .commands()
        .run(&format!("python3 -c '{quoted}'"))
        .await
        .unwrap();
    assert_eq!(r.exit_code, 0, "{r:?}");
    r.stdout
}

/// `key=value` lines.
fn fields(out: &str) -> std::collections::BTreeMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Host pids of processes whose root directory holds `marker` (the sandbox's processes).
fn pids_with_root_file(marker: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| Path::new(&format!("/proc/{pid}/root{marker}")).exists())
        .collect()
}

/// The host PIDs of the PID 1s (agents) whose root holds `marker`.
fn pid1s_with_root_file(marker: &str) -> Vec<i32> {
    pids_with_root_file(marker)
        .into_iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .unwrap_or_default()
                .lines()
                .any(|l| l.starts_with("NSpid:") && l.ends_with("\t1"))
        })
        .collect()
}

/// Kills the PID 1 of the sandbox whose root holds `marker` from the host (SIGKILL), and
/// waits until it is gone.
fn kill_pid1(marker: &str) {
    let agent = *pid1s_with_root_file(marker)
        .first()
        .expect("the sandbox's PID 1 on the host");
    let killed = std::process::Command::new("kill")
        .args(["-9", &agent.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let gone = (0..1000).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(10));
        !Path::new(&format!("/proc/{agent}")).exists()
    });
    assert!(
        gone,
        "the sandbox's PID 1 ({agent}) outlived SIGKILL for 10 s"
    );
}

const SYSCALLS: &str = r#"
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def sysc(*a):
    r = libc.syscall(*[ctypes.c_long(x) for x in a])
    return r, ctypes.get_errno()
def res(r, e):
    return "ok" if r >= 0 else "err%d" % e
"#;

/// Point 1: the sandbox's PID 1 (the agent) is out of reach of everything in the sandbox:
/// its executable, descriptors, memory and environment cannot be read, it cannot be traced,
/// and `pidfd_getfd` cannot take its descriptors; commands inherit no descriptor but 0-2.
#[dual]
pub async fn agent_is_out_of_reach_from_inside() {
    local_only!("the local backend (its sandbox agent is PID 1)");
    let server = common::server();
    let sb = make(&server, "reach").await;
    let program = format!(
        "{SYSCALLS}
out = {{}}
def tryop(name, f):
    try:
        f(); out[name] = \"ok\"
    except OSError as e:
        out[name] = \"err%d\" % e.errno
tryop(\"exe_read\", lambda: open(\"/proc/1/exe\", \"rb\").read(1))
tryop(\"exe_write\", lambda: open(\"/proc/1/exe\", \"r+b\"))
tryop(\"exe_link\", lambda: os.readlink(\"/proc/1/exe\"))
tryop(\"fd_list\", lambda: os.listdir(\"/proc/1/fd\"))
tryop(\"environ\", lambda: open(\"/proc/1/environ\", \"rb\").read())
tryop(\"mem\", lambda: open(\"/proc/1/mem\", \"rb\"))
tryop(\"map_files\", lambda: os.listdir(\"/proc/1/map_files\"))
out[\"ptrace\"] = res(*sysc(101, 16, 1, 0, 0))
pfd, e = sysc(434, 1, 0)
out[\"getfd\"] = (\"err%d\" % e) if pfd < 0 else res(*sysc(438, pfd, 0, 0))
local = ctypes.create_string_buffer(8)
iov = (ctypes.c_uint64 * 2)(ctypes.addressof(local), 8)
remote = (ctypes.c_uint64 * 2)(0x400000, 8)
out[\"vm_read\"] = res(*sysc(310, 1, ctypes.addressof(iov), 1, ctypes.addressof(remote), 1, 0))
out[\"init\"] = open(\"/proc/1/cmdline\", \"rb\").read().split(b\"\\0\")[0].decode()
for k, v in out.items(): print(k + \"=\" + v)
"
    );
    let f = fields(&python(&sb, &program).await);
    for k in [
        "exe_read",
        "exe_write",
        "exe_link",
        "fd_list",
        "environ",
        "mem",
        "map_files",
        "ptrace",
        "getfd",
        "vm_read",
    ] {
        assert!(f[k].starts_with("err"), "{k} on PID 1 must fail: {f:?}");
    }
    assert_eq!(f["init"], "superserve-agent", "{f:?}");
    let r = sb.commands().run("ls /proc/self/fd").await.unwrap();
    assert_eq!(
        r.stdout, "0\n1\n2\n3\n",
        "only stdio (and the listing): {r:?}"
    );
    sb.kill().await.unwrap();
}

/// Point 1: a sandbox that stops every new process of its own (so a command it is asked to
/// start is stopped before or after its exec) delays neither exec nor create elsewhere.
#[dual]
pub async fn stopped_children_in_one_sandbox_stall_nobody_else() {
    local_only!("the local backend (its sandbox agent starts commands)");
    let server = common::server();
    let a = make(&server, "stopper").await;
    let b = make(&server, "bystander").await;
    let stopper = "import os, signal, time
seen = set(int(p) for p in os.listdir(\"/proc\") if p.isdigit())
end = time.time() + 120
while time.time() < end:
    for p in os.listdir(\"/proc\"):
        if p.isdigit() and int(p) not in seen:
            seen.add(int(p))
            try: os.kill(int(p), signal.SIGSTOP)
            except OSError: pass
";
    let r = a
        .commands()
        .run(&format!(
            "setsid python3 -c '{stopper}' >/dev/null 2>&1 < /dev/null & echo started"
        ))
        .await
        .unwrap();
    assert_eq!(r.stdout.trim(), "started");
    // commands in `a` now get stopped (their calls time out; that is a's own business)
    for _ in 0..3 {
        let r = a
            .commands()
            .run_with("true", RunOptions::new().timeout_seconds(1))
            .await;
        if r.is_err() {
            break;
        }
    }
    let r = b
        .commands()
        .run_with("echo alive", RunOptions::new().timeout_seconds(5))
        .await
        .expect("exec in another sandbox must not wait for a stopped process");
    assert_eq!(r.stdout, "alive\n");
    let c = make(&server, "newcomer").await;
    let r = c.commands().run("echo fresh").await.unwrap();
    assert_eq!(r.stdout, "fresh\n");
    for sb in [a, b, c] {
        sb.kill().await.unwrap();
    }
}

/// Point 2: root in the sandbox is an unprivileged host id, yet owns the system files (writes
/// under `/usr` work); files uploaded through `/files` belong to it; a setuid-root binary and a
/// file-capability binary planted in the sandbox and run on the host, copied out with their
/// ownership and attributes as an operator's `cp -a` or a backup would, gain nothing.
#[dual]
pub async fn sandbox_root_is_not_host_root() {
    local_only!("the local backend (the sandbox's files on this host)");
    let server = common::server();
    let sb = make(&server, "rootless").await;
    let r = sb.commands().run("cat /proc/self/uid_map").await.unwrap();
    let map: Vec<u64> = r
        .stdout
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    assert_eq!(map.len(), 3, "{r:?}");
    assert_eq!(map[0], 0);
    assert!(map[1] >= 65536, "sandbox root maps to host id {}", map[1]);
    assert!(map[2] <= 65536, "{r:?}");

    // the top directories of a fresh disk belong to the sandbox's root
    let r = sb
        .commands()
        .run("stat -c %u:%g:%a / /usr && touch /top /usr/top && stat -c %u:%g /top /usr/top")
        .await
        .unwrap();
    assert_eq!(r.stdout, "0:0:755\n0:0:755\n0:0\n0:0\n", "{r:?}");

    let r = sb
        .commands()
        .run(
            "stat -c %u:%g /usr/bin/env /etc/passwd && echo tool > /usr/local/bin/newtool \
             && cp /usr/bin/true /usr/bin/true-copy && chown 1000:1000 /usr/bin/true-copy \
             && stat -c %u /usr/bin/true-copy && echo wrote",
        )
        .await
        .unwrap();
    assert_eq!(r.stdout, "0:0\n0:0\n1000\nwrote\n", "{r:?}");

    sb.files()
        .write("/srv/uploaded/file.txt", "hello")
        .await
        .unwrap();
    let r = sb
        .commands()
        .run("stat -c %u:%g /srv/uploaded /srv/uploaded/file.txt")
        .await
        .unwrap();
    assert_eq!(r.stdout, "0:0\n0:0\n", "{r:?}");

    let marker = format!("/tmp/planted-{}", sb.id());
    let r = sb
        .commands()
        .run(&format!(
            "mkdir {marker} && cp /usr/bin/id {marker}/id && chmod 4755 {marker}/id && \
             cp /usr/bin/python3 {marker}/py && python3 -c \"import os, struct; \
             os.setxattr('{marker}/py', 'security.capability', \
             struct.pack('<IIIII', 0x02000001, 1 << 7, 0, 0, 0))\" && echo planted"
        ))
        .await
        .unwrap();
    assert_eq!(r.stdout, "planted\n", "{r:?}");
    let pid = *pids_with_root_file(&marker)
        .first()
        .expect("a host process with the sandbox's root");
    let out = common::temp_path("planted");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o755)).unwrap();
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("/proc/{pid}/root{marker}/id"))
        .arg(format!("/proc/{pid}/root{marker}/py"))
        .arg(&out)
        .status()
        .unwrap();
    assert!(copied.success());
    let nobody = |program: PathBuf, args: &[&str]| {
        let o = std::process::Command::new(program)
            .args(args)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_owned()
    };
    let euid = nobody(out.join("id"), &["-u"]);
    assert!(!euid.is_empty());
    assert_ne!(euid, "0", "the planted setuid binary made nobody host root");
    let py = nobody(
        out.join("py"),
        &[
            "-c",
            "import os\ntry:\n os.setuid(0); print('became-root')\nexcept OSError as e: print('denied')",
        ],
    );
    assert_eq!(
        py, "denied",
        "the planted file capability worked on the host"
    );
    let _ = std::fs::remove_dir_all(&out);
    sb.kill().await.unwrap();
}

/// Point 2: the data directory is 0700 and the state database 0600.
#[dual]
pub async fn data_directory_and_database_are_private() {
    local_only!("the local backend's data directory");
    let dir = common::temp_path("superserve-private");
    let server = LocalServer::builder().data_dir(&dir).start().unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("state.db")), 0o600);
    let temp = common::server();
    assert_eq!(mode(temp.data_dir()), 0o700);
    assert_eq!(mode(&temp.data_dir().join("state.db")), 0o600);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Point 3: System V IPC objects of the host and of another sandbox are invisible and cannot
/// be attached.
#[dual]
pub async fn ipc_is_not_shared() {
    local_only!("the local backend (IPC objects of this host)");
    let server = common::server();
    let a = make(&server, "ipc-a").await;
    let b = make(&server, "ipc-b").await;
    let host = std::process::Command::new("ipcmk")
        .args(["-M", "4096"])
        .output()
        .unwrap();
    let host_id: String = String::from_utf8_lossy(&host.stdout)
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    assert!(!host_id.is_empty(), "{host:?}");
    let attach = |id: &str| {
        format!(
            "{SYSCALLS}
libc.shmat.restype = ctypes.c_void_p
p = libc.shmat({id}, None, 0)
print(\"shm_{id}=\" + (\"err\" if p in (None, 2**64 - 1) else \"attached\"))
"
        )
    };
    let listed = |out: &str| out.lines().filter(|l| l.starts_with("0x")).count();
    // the host's segment, from a sandbox that has none of its own
    let r = python(&a, &attach(&host_id)).await;
    let rows = a.commands().run("ipcs -m -q").await.unwrap();
    let _ = std::process::Command::new("ipcrm")
        .args(["-m", &host_id])
        .status();
    assert!(r.contains("=err"), "the host's segment is attachable: {r}");
    assert_eq!(listed(&rows.stdout), 0, "a sees the host's IPC: {rows:?}");
    // another sandbox's segment and queue
    let r = a.commands().run("ipcmk -M 4096; ipcmk -Q").await.unwrap();
    let a_ids: Vec<String> = r
        .stdout
        .lines()
        .map(|l| l.chars().filter(char::is_ascii_digit).collect())
        .collect();
    assert_eq!(a_ids.len(), 2, "{r:?}");
    let r = python(&b, &attach(&a_ids[0])).await;
    assert!(r.contains("=err"), "a's segment is attachable in b: {r}");
    let rows = b.commands().run("ipcs -m -q").await.unwrap();
    assert_eq!(listed(&rows.stdout), 0, "b sees a's IPC objects: {rows:?}");
    let rows = a.commands().run("ipcs -m -q").await.unwrap();
    assert_eq!(listed(&rows.stdout), 2, "a's own objects: {rows:?}");
    a.kill().await.unwrap();
    b.kill().await.unwrap();
}

/// Point 3: keyrings and the dangerous kernel interfaces are blocked inside a sandbox (the
/// seccomp filter), nested user namespaces included.
#[dual]
pub async fn dangerous_syscalls_are_blocked() {
    local_only!("the local backend's seccomp filter");
    let server = common::server();
    let sb = make(&server, "seccomp").await;
    let program = format!(
        "{SYSCALLS}
buf = ctypes.create_string_buffer(256)
fd = os.open(\"/proc/self/ns/net\", os.O_RDONLY)
tests = [
  (\"keyctl\", (250, 0, -3, 1)),
  (\"add_key\", (248, ctypes.addressof(ctypes.create_string_buffer(b\"user\")), ctypes.addressof(ctypes.create_string_buffer(b\"k\")), ctypes.addressof(buf), 1, -3)),
  (\"request_key\", (249, ctypes.addressof(ctypes.create_string_buffer(b\"user\")), ctypes.addressof(ctypes.create_string_buffer(b\"k\")), 0, -3)),
  (\"unshare_user\", (272, 0x10000000)),
  (\"unshare_net\", (272, 0x40000000)),
  (\"setns\", (308, fd, 0)),
  (\"bpf\", (321, 0, ctypes.addressof(buf), 72)),
  (\"perf_event_open\", (298, ctypes.addressof(buf), 0, -1, -1, 0)),
  (\"userfaultfd\", (323, 0)),
  (\"kexec_load\", (246, 0, 0, 0, 0)),
  (\"init_module\", (175, ctypes.addressof(buf), 16, ctypes.addressof(buf))),
  (\"mount\", (165, ctypes.addressof(ctypes.create_string_buffer(b\"none\")), ctypes.addressof(ctypes.create_string_buffer(b\"/mnt\")), ctypes.addressof(ctypes.create_string_buffer(b\"tmpfs\")), 0, 0)),
  (\"fsopen\", (430, ctypes.addressof(ctypes.create_string_buffer(b\"tmpfs\")), 0)),
  (\"io_uring_setup\", (425, 1, ctypes.addressof(buf))),
  (\"open_by_handle_at\", (304, fd, ctypes.addressof(buf), 0)),
  (\"clone3\", (435, ctypes.addressof(buf), 88)),
]
for name, args in tests:
    print(name + \"=\" + res(*sysc(*args)))
"
    );
    let f = fields(&python(&sb, &program).await);
    assert_eq!(f.len(), 16, "{f:?}");
    for (name, result) in &f {
        let want = if name == "clone3" { "err38" } else { "err1" };
        assert_eq!(result, want, "{name} must be refused: {f:?}");
    }
    // and the command-line way to a nested user namespace
    let r = sb
        .commands()
        .run("unshare -U -r id -u; echo rc=$?")
        .await
        .unwrap();
    assert!(!r.stdout.contains("rc=0"), "nested user namespace: {r:?}");
    sb.kill().await.unwrap();
}

/// Point 4: a fork bomb hits the sandbox's pids limit (EAGAIN); the host and another sandbox
/// keep working.
#[dual]
pub async fn fork_bomb_hits_the_sandbox_pids_limit() {
    local_only!("the local backend's pids limit");
    let server = common::server();
    let bomb = make(&server, "bomb").await;
    let other = make(&server, "calm").await;
    let program = "import os, signal
n, err = 0, None
while n < 100000:
    try:
        pid = os.fork()
    except OSError as e:
        err = e.errno
        break
    if pid == 0:
        try: os.execv(\"/bin/sleep\", [\"sleep\", \"600\"])
        finally: os._exit(0)
    n += 1
print(\"forks=%d errno=%s\" % (n, err), flush=True)
os.killpg(0, signal.SIGKILL)
";
    let r = bomb
        .commands()
        .run(&format!("python3 -c '{program}'"))
        .await
        .unwrap();
    let f: std::collections::BTreeMap<String, String> = r
        .stdout
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    assert_eq!(f.get("errno").map(String::as_str), Some("11"), "{r:?}");
    let forks: u32 = f["forks"].parse().unwrap();
    assert!(forks > 10 && forks < 100_000, "{r:?}");
    let host = std::process::Command::new("sh")
        .args(["-c", "echo host-alive"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&host.stdout), "host-alive\n");
    let r = other.commands().run("echo calm").await.unwrap();
    assert_eq!(r.stdout, "calm\n");
    bomb.kill().await.unwrap();
    other.kill().await.unwrap();
}

/// Swap on the host for as long as it lives (a swap file of its own, taken off and removed
/// on drop).
struct HostSwap {
    file: PathBuf,
}

impl HostSwap {
    fn on(mib: u32) -> HostSwap {
        let file =
            std::env::temp_dir().join(format!("superserve-test-swap-{}", std::process::id()));
        let run = |program: &str, args: &[&std::ffi::OsStr]| {
            let out = std::process::Command::new(program)
                .args(args)
                .output()
                .unwrap_or_else(|e| panic!("{program}: {e}"));
            assert!(
                out.status.success(),
                "{program} failed (the test needs root and a file system that holds swap \
                 files): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let _ = std::fs::remove_file(&file);
        let size = format!("{mib}M");
        run(
            "fallocate",
            &["-l".as_ref(), size.as_ref(), file.as_os_str()],
        );
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let swap = HostSwap { file };
        run("mkswap", &[swap.file.as_os_str()]);
        run("swapon", &[swap.file.as_os_str()]);
        swap
    }
}

impl Drop for HostSwap {
    fn drop(&mut self) {
        let _ = std::process::Command::new("swapoff")
            .arg(&self.file)
            .output();
        let _ = std::fs::remove_file(&self.file);
    }
}

/// Point 4: the memory limit counts swap. With swap on the host, a process that touches more
/// memory than its sandbox's limit (512 MiB by default) is killed, not swapped out; the
/// sandbox works on.
#[dual]
pub async fn memory_limit_counts_swap() {
    local_only!("the local backend's memory limit");
    let _swap = HostSwap::on(1024);
    let server = common::server();
    let sb = make(&server, "swap").await;
    let r = sb
        .commands()
        .run("python3 -c 'b = b\"x\" * (900 * 2**20); print(\"survived\", len(b))'")
        .await
        .unwrap();
    assert_eq!(
        r.exit_code, 137,
        "killed by the OOM killer (SIGKILL): {r:?}"
    );
    assert!(!r.stdout.contains("survived"), "{r:?}");
    let r = sb.commands().run("echo alive").await.unwrap();
    assert_eq!(r.stdout, "alive\n");
    sb.kill().await.unwrap();
}

/// Point 8: a sandbox whose PID 1 died is started again on its own disk only once the mount
/// of its previous run is gone. A download from the previous run holds that mount: while it
/// is open the restart is refused (two live mounts of one ext4 image would each write their
/// own view of it); once it is closed, the sandbox starts with its files.
#[dual]
pub async fn a_restart_never_mounts_a_disk_twice() {
    local_only!("the local backend's sandbox disks");
    let server = common::server();
    let sb = make(&server, "remount").await;
    let marker = format!("/.remount-{}", sb.id());
    let r = sb
        .commands()
        .run(&format!(
            "touch {marker} && head -c 33554432 /dev/urandom > /big && echo kept > /kept.txt \
             && echo ok"
        ))
        .await
        .unwrap();
    assert_eq!(r.stdout, "ok\n", "{r:?}");
    // opened and left unread: the backend holds the file of the running disk
    let reader = sb.files().open_read("/big").await.unwrap();
    kill_pid1(&marker);
    let err = sb.commands().run("cat /kept.txt").await.unwrap_err();
    assert!(
        err.to_string().contains("still in use by its previous run"),
        "{err:?}"
    );
    drop(reader);
    let r = sb.commands().run("cat /kept.txt").await.unwrap();
    assert_eq!(r.stdout, "kept\n", "{r:?}");
    sb.kill().await.unwrap();
}

/// Point 8: data-plane calls that start a sandbox again (its PID 1 died) and whose clients
/// hang up at every moment of that start leave the sandbox whole: a start once begun runs to
/// its end (the sandbox's PID 1 is back with nobody waiting), and the next call uses that
/// runtime, on the sandbox's own files.
#[dual]
pub async fn hang_ups_during_a_restart_leave_the_sandbox_whole() {
    local_only!("the local backend's sandbox runtimes");
    let server = common::server();
    let sb = make(&server, "restart-hangup").await;
    let marker = format!("/.restart-hangup-{}", sb.id());
    let r = sb
        .commands()
        .run(&format!("echo kept > {marker} && echo ok"))
        .await
        .unwrap();
    assert_eq!(r.stdout, "ok\n", "{r:?}");
    let data = common::authority(server.sandbox_url());
    for round in 0..4u64 {
        // a token of its own each round: the SDK's calls activate again (which rotates it)
        let token = common::access_token(server.base_url(), server.api_key(), sb.id());
        let exec = r#"{"command":"true"}"#;
        let request = format!(
            "{}\r\ncontent-length: {}\r\n\r\n{exec}",
            common::data_request("POST /exec", sb.id(), &token),
            exec.len()
        );
        kill_pid1(&marker);
        // each start is cut by its client 2 to 25 ms in, one after another
        for i in 0..6u64 {
            common::send_and_hang_up(
                &data,
                &request,
                std::time::Duration::from_millis(2 + round * 6 + i),
            );
        }
        // a start that was begun runs to its end with nobody waiting for it: the sandbox's
        // PID 1 is back before any other call
        let mut pid1s = Vec::new();
        for _ in 0..1000 {
            pid1s = pid1s_with_root_file(&marker);
            if !pid1s.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(
            pid1s.len(),
            1,
            "round {round}: the start cut by its clients did not finish: PID 1s {pid1s:?}"
        );
        let r = sb.commands().run(&format!("cat {marker}")).await.unwrap();
        assert_eq!(r.stdout, "kept\n", "round {round}: {r:?}");
        assert_eq!(
            pid1s_with_root_file(&marker),
            pid1s,
            "round {round}: the call after the cuts started the sandbox again"
        );
    }
    sb.kill().await.unwrap();
}

/// Point 4: writing past the disk quota fails with ENOSPC inside the sandbox and with 507 for
/// uploads; another sandbox and the host are unaffected.
#[dual]
pub async fn disk_quota_is_enforced() {
    local_only!("the local backend's disk size option");
    let server = LocalServer::builder().sandbox_disk_mib(64).start().unwrap();
    let full = make(&server, "full").await;
    let other = make(&server, "roomy").await;
    let r = full
        .commands()
        .run("dd if=/dev/zero of=/tmp/fill bs=1M count=100 2>&1; echo rc=$?")
        .await
        .unwrap();
    assert!(r.stdout.contains("No space left on device"), "{r:?}");
    assert!(!r.stdout.contains("rc=0"), "{r:?}");
    let err = full
        .files()
        .write("/tmp/upload.bin", vec![7u8; 1 << 20])
        .await
        .unwrap_err();
    assert_eq!(err.status_code(), Some(507), "{err}");
    let r = other
        .commands()
        .run("dd if=/dev/zero of=/tmp/ok bs=1M count=20 2>&1 >/dev/null; echo rc=$?")
        .await
        .unwrap();
    assert!(r.stdout.contains("rc=0"), "{r:?}");
    let r = full
        .commands()
        .run("rm /tmp/fill && echo again > /tmp/small && cat /tmp/small")
        .await
        .unwrap();
    assert_eq!(r.stdout, "again\n", "{r:?}");
    let host_file = common::temp_path("host-write");
    std::fs::write(&host_file, vec![1u8; 1 << 20]).unwrap();
    let _ = std::fs::remove_file(&host_file);
    full.kill().await.unwrap();
    other.kill().await.unwrap();
}

/// Creates are sent with plain HTTP and not waited for (so the backend can be killed while
/// they are in flight).
fn fire_creates(base_url: &str, key: &str, n: usize) {
    use std::io::Write;
    let addr = base_url.trim_start_matches("http://").to_owned();
    for i in 0..n {
        let (addr, key) = (addr.clone(), key.to_owned());
        std::thread::spawn(move || {
            if let Ok(mut s) = std::net::TcpStream::connect(&addr) {
                let body = format!("{{\"name\":\"inflight-{i}\"}}");
                let _ = write!(
                    s,
                    "POST /sandboxes HTTP/1.1\r\nHost: {addr}\r\nX-API-Key: {key}\r\n\
                     Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = std::io::Read::read(&mut s, &mut [0u8; 64]);
            }
        });
    }
}

/// Processes that live in a cgroup of the local backend and have lost their parent (so no
/// live backend owns them).
fn orphaned_sandbox_processes() -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let ppid = status.lines().find_map(|l| l.strip_prefix("PPid:"))?.trim();
            let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
            (ppid == "1" && cg.contains("superserve-local")).then(|| format!("{pid}: {cg}"))
        })
        .collect()
}

/// A real backend process (the `superserve-local` binary) on `dir`; returns it with its
/// control-plane URL and data-plane URL.
fn start_backend(dir: &Path, key: &str) -> (std::process::Child, String, String) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_superserve-local"))
        .arg("--data-dir")
        .arg(dir)
        .args(["--api-key", key])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut base, mut data) = (String::new(), String::new());
    while base.is_empty() || data.is_empty() {
        let line = lines.next().expect("the backend printed its URLs").unwrap();
        if let Some(v) = line.strip_prefix("SUPERSERVE_BASE_URL=") {
            base = v.trim().to_owned();
        }
        if let Some(v) = line.strip_prefix("SUPERSERVE_SANDBOX_URL=") {
            data = v.trim().to_owned();
        }
    }
    std::thread::spawn(move || for _ in lines {});
    (child, base, data)
}

/// Point 8: `kill -9` of a real backend process in the middle of creates, then a restart on
/// the same data directory: no sandbox process, cgroup or mount of the dead backend survives;
/// records and files are back.
#[dual]
pub async fn kill_9_in_the_middle_of_creates_then_restart() {
    local_only!("the local backend binary, killed and restarted");
    let dir = common::temp_path("superserve-crash");
    let key = "ss_live_crashtestkey00000000000000000000";
    let (mut backend, base, data) = start_backend(&dir, key);
    let config = superserve::Config::builder()
        .api_key(key)
        .base_url(base.clone())
        .sandbox_url(data.clone())
        .build()
        .unwrap();
    let kept = Sandbox::create_with_config(&config, CreateOptions::new("kept"))
        .await
        .unwrap();
    kept.files()
        .write("/root/notes.txt", "survives")
        .await
        .unwrap();
    let kept_id = kept.id().to_owned();
    fire_creates(&base, key, 6);
    std::thread::sleep(std::time::Duration::from_millis(30));
    backend.kill().unwrap();
    backend.wait().unwrap();

    let (mut backend, base, data) = start_backend(&dir, key);
    let config = superserve::Config::builder()
        .api_key(key)
        .base_url(base)
        .sandbox_url(data)
        .build()
        .unwrap();
    // whatever the dead backend left is gone: its sandboxes' processes (they die with their
    // channel, or are killed with their cgroups by the restart)
    let mut orphans = orphaned_sandbox_processes();
    for _ in 0..100 {
        if orphans.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        orphans = orphaned_sandbox_processes();
    }
    assert!(orphans.is_empty(), "left over: {orphans:?}");
    let instance = std::fs::read_to_string(dir.join(".instance")).unwrap();
    let groups = Path::new("/sys/fs/cgroup/freezer/superserve-local").join(instance.trim());
    let left: Vec<_> = std::fs::read_dir(&groups)
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .collect();
    assert!(left.is_empty(), "cgroups left over: {left:?}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(dir.to_str().unwrap()),
        "a mount of the data directory survived"
    );
    let sb = Sandbox::connect_with_config(&config, &kept_id)
        .await
        .unwrap();
    let r = sb.commands().run("cat /root/notes.txt").await.unwrap();
    assert_eq!(r.stdout, "survives");
    backend.kill().unwrap();
    backend.wait().unwrap();
    let (mut backend, _, _) = start_backend(&dir, key);
    backend.kill().unwrap();
    backend.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
