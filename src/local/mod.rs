//! The local backend (feature `local`): a Superserve-compatible server on this machine.
//!
//! [`LocalServer`] answers the Superserve control plane (sandbox lifecycle, list, update,
//! secret bindings, network log, preview ports and tokens, snapshots, templates and builds,
//! secrets, providers), serves previews of sandboxes' ports (below), and answers the data
//! plane (`/exec`, `/exec/stream`, the
//! `/exec/connect` WebSocket, `/files`, whose reads honour single byte ranges) with the same
//! JSON bodies, status codes and error shapes as the hosted service, and runs every sandbox as
//! an isolated process tree:
//!
//! * a copy-on-write root filesystem: overlayfs over the `superserve/base` image, a skeleton
//!   root with a minimal `/etc` (no `/etc/shadow`, no host home directories) plus the host's
//!   `/usr` as a read-only lower layer (so `sh`, coreutils, `python3`, `curl`, `git` work).
//!   Writes land on the sandbox's own disk: an ext4 image of `disk_mib` MiB (4096 unless
//!   [`LocalServerBuilder::sandbox_disk_mib`] says otherwise), mounted inside the sandbox only;
//!   a full disk is `ENOSPC` inside and `507` for uploads;
//! * its own user namespace: root in the sandbox is an unprivileged host id (65536 ids per
//!   sandbox, from 2^28 up), and still owns the system files (idmapped lower layers), so
//!   package installs and writes under `/usr` work; what it plants (setuid, file
//!   capabilities) means nothing on the host;
//! * its own PID, mount, UTS, IPC and network namespaces (hostname = the first 8 characters of
//!   its id), all owned by the host, with a small agent as PID 1 that holds nothing of the
//!   backend and starts commands on its request, `/proc`, a minimal `/dev`, a reduced
//!   capability set, a fresh session keyring and a seccomp filter in the spirit of Docker's
//!   default profile (no keyrings, bpf, perf events, userfaultfd, mounts, nested namespaces,
//!   io_uring, kernel modules, ...);
//! * a cgroup (v1) per sandbox: the freezer pauses and resumes it with every process keeping its
//!   memory, `memory_mib` (512) and `vcpu_count` (1) become memory (swap included) and CPU
//!   limits, and a pids limit (1024 tasks) stops fork bombs inside the sandbox;
//! * state (records, tokens, metadata, bindings, network log) in SQLite in the data directory:
//!   a restart on the same directory keeps every record and file. Processes do not survive a
//!   restart: sandboxes that were running come back `paused`, and resuming (or `activate`)
//!   starts a fresh process tree on the same files.
//!
//! Snapshots and the layer store: the sandboxes' disks live in a btrfs file system the
//! backend keeps for itself (a sparse image `pool.btrfs` in the data directory), and read-only
//! layers shared by sandboxes, snapshots and templates live beside them, each kept while
//! something uses it. A snapshot (`POST /sandboxes/{id}/snapshot`) is of kind `fs`: it
//! captures the sandbox's whole filesystem (both overlays' writes, deletions included) and its
//! configuration (template, vCPUs, memory, disk size, env vars, network rules, secret bindings
//! by secret name) at one instant: a running sandbox is frozen for the capture (milliseconds:
//! the disk is flushed and reflinked, no data is copied whatever its size) and thawed after,
//! and keeps running. **Processes and memory are not captured** (this kernel offers no working
//! checkpoint/restore): a sandbox created `from_snapshot` boots fresh on the snapshot's files
//! with its configuration (what the create request sets wins; bound secrets get new
//! stand-ins). It gets an empty disk of its own over the snapshot's layers, so only its own
//! writes count against its disk. Snapshots of such sandboxes make chains; deleting a
//! snapshot keeps the layers that sandboxes or later snapshots still use; snapshots outlive
//! their sandbox and a restart.
//!
//! Templates: `GET /templates` lists the built-in `superserve/base` and the team's templates.
//! A build (`POST /templates`, `POST /templates/{id}/builds`) starts `from` a built-in, another
//! ready template, or any OCI image (linux/amd64, pulled with the distribution protocol:
//! anonymous bearer tokens, plain HTTP for loopback registries, every blob checked against its
//! digest, layers unpacked with their whiteouts into the layer store, where a layer two images
//! share is stored once; Docker Hub short names resolve as Docker does, and
//! [`LocalServerBuilder::registry_mirror`] sends Docker Hub pulls to a mirror first). Its steps
//! run in a build sandbox with the isolation of any sandbox; the result is captured like a
//! snapshot. Sandboxes created `from_template` get its files, its `env`, `workdir` (default
//! working directory) and `user` (default user), its vCPUs, memory and disk; its `start_cmd`
//! starts at every boot and its `ready_cmd` is polled until it succeeds before the sandbox is
//! `active`. Build logs replay from the start and follow live; a build a restart interrupted is
//! marked failed.
//!
//! Commands run as root inside the sandbox (or the template's user) with `HOME=/root`,
//! working directory `/` (or the template's) unless `working_dir` says otherwise, `PATH`,
//! `LANG=C.UTF-8`, the template's `env`, the sandbox's `env_vars` and the call's `env`. A
//! command killed by its timeout reports exit code 124; one killed by signal N reports 128+N.
//!
//! Networking: each sandbox has its own network namespace whose only way out is the backend's
//! egress proxy, reached transparently (an nftables redirect inside the namespace; programs
//! need no proxy settings). DNS inside the sandbox is answered by the backend. Per connection
//! the proxy enforces the sandbox's `network` rules (`allow_out` CIDRs and domain patterns win
//! over `deny_out` CIDRs; a live `update` applies at once) and always blocks, unless the
//! operator allowed them ([`LocalServerBuilder::allow_private_destination`]): the host's own
//! addresses (rule `host:<ip>`), the special-purpose ranges of RFC 6890 and its updates
//! (private, loopback, link-local, shared address space, "this network", IETF protocol
//! assignments, documentation, benchmarking, AS112, AMT, 6to4 relay, multicast, reserved,
//! broadcast; rule `<kind>:<cidr>`), and every network the host's interfaces are on, its
//! uplink's subnet included (`host-network:<cidr>`). Every connection lands in the network
//! log with its verdict, blocking rule and byte counts. DNS obeys the same rules: a name that
//! no rule could allow (a `deny_out` of `0.0.0.0/0` and no `allow_out` domain pattern or
//! network for it) is answered `REFUSED` without being looked up, an answer only carries
//! addresses a connection could go to (none left: `REFUSED`), and each refused lookup is in
//! the network log as a blocked `connection` row with the name as `host`, `dst_port` 53 and
//! rule `dns:<rule>`. Egress is TCP over IPv4 (plus DNS);
//! other UDP, ICMP and IPv6 have no way out. The backend configures each namespace (address,
//! route, nf_tables redirect rules) over netlink itself; on a kernel without nf_tables NAT
//! sandboxes get loopback only ([`LocalServer::egress_available`]).
//!
//! Secrets: team secrets are stored encrypted (ChaCha20-Poly1305, key in the data directory).
//! A bound secret appears in the sandbox as a stand-in token; a request to one of the secret's
//! hosts that carries the stand-in gets the real credential in the secret's header(s) at the
//! proxy (HTTPS through the backend's own CA, which is in the sandboxes' trust store) and is
//! audited. The host counts only when the request names it (absolute target, else `Host`),
//! the sandbox resolved it to the very address the connection goes to, and, over HTTPS, it is
//! the TLS server name: a stand-in sent to the right address naming another host is refused,
//! and a TLS session for a name that is not such a host is never intercepted. Detaching the
//! binding or deleting the secret revokes the stand-in. A stand-in sent to a host that none
//! of the sandbox's secrets covers passes unchanged (it is worthless there); sent to a host
//! another of its secrets covers, it is refused. Refusals reach the
//! program as an HTTP answer with `{"error":{"code","message"}}` and
//! `X-Superserve-Egress: refused`, and are audited:
//!
//! | status | code | when |
//! |---|---|---|
//! | 403 | `secret_revoked` | the binding was detached or replaced, or the secret deleted |
//! | 403 | `secret_host_mismatch` | the stand-in was sent to a host its secret does not cover, or the request names a host the connection does not go to |
//! | 403 | `secret_invalid` | the credential cannot be sent in a header |
//! | 502 | `secret_unavailable` | the stored value cannot be read (e.g. the key file was replaced) |
//! | 502 | `upstream_tls_error` | the upstream's certificate could not be verified |
//!
//! Previews: a third listener, the preview proxy ([`LocalServer::preview_url`], e.g.
//! `http://localhost:41236`, which [`LocalServer::config`] carries), serves port `3000` of
//! sandbox `<id>` at `http://3000-<id>.localhost:41236/` (browsers and curl resolve every
//! `*.localhost` name to this machine, no DNS needed) and, for clients that cannot resolve
//! such names, at `http://127.0.0.1:41236/_preview/3000-<id>/` (the app sees the path without
//! the prefix and gets it in `X-Forwarded-Prefix`; a `Location: /…` it answers is put
//! back under the prefix; previews share one origin in this form, so no cookie is ever set or
//! read there). Either form can also be reached by naming the preview host in `Host` on a
//! connection to the listener. The proxy connects to the port on loopback inside the
//! sandbox's network namespace (so apps bound to `127.0.0.1` are reached too), speaks
//! HTTP/1.1 with bodies streamed both ways, keeps connections to apps alive, and tunnels
//! WebSocket (any `Upgrade`) connections. Access follows the sandbox's `preview_access`, as
//! on the hosted service:
//!
//! * `legacy_public` (sandboxes created without a policy): every port, no publishing needed
//!   (a port published `private` still needs a token);
//! * `public` and `private`: only published ports (`404` otherwise); the policy is the
//!   default access of newly published ports, each port keeps its own;
//! * a private port needs a token of `get_preview_token` (`spv1.…`, HMAC-signed under a key
//!   kept in the data directory with mode 0600, carrying the port's token version and an
//!   optional expiry) in the `X-Superserve-Preview-Token` header, or in the
//!   `superserve_preview_token` query parameter of a signed link: a `GET` with a valid one is
//!   answered `302` to the same URL without it, and the token moves into a host-only
//!   `HttpOnly` cookie (`superserve_preview_token`, `SameSite=Lax`, no `Secure`: the proxy
//!   speaks plain HTTP). Missing or refused: `401` (a CORS preflight, `OPTIONS`, carries
//!   no credentials and passes to the app, as on the hosted service). Rotating a port's
//!   tokens or unpublishing it bumps its version, which revokes every earlier header token,
//!   link and cookie (also once the port is published again). Tokens are never listed,
//!   stored or logged, and the header, cookie and parameter are removed before a request
//!   reaches the app.
//!
//! Only after these checks does a preview reveal the sandbox's state, on an HTML page with
//! its code in `X-Superserve-Preview-Error`: `404 sandbox_not_found` (unknown or deleted),
//! `503 sandbox_paused` (paused or pausing; with `Retry-After`), `503 sandbox_unavailable`
//! (not running), `502 port_not_listening`, `504 port_not_accepting`, `400
//! invalid_preview_port` (below 1024, above 65535, or the daemon's 49983). Nothing a preview
//! does resumes a sandbox; a request, download or tunnel in progress ends when its sandbox is
//! paused or deleted. Published ports and token versions are in the state database and
//! survive a restart.
//!
//! The listeners survive hostile clients: a request head must arrive within 10 s, an idle
//! keep-alive connection is closed after 120 s, and each listener keeps at most a share of the
//! process's descriptors open (at the cap the longest-waiting idle connection makes room;
//! when every connection has a request in progress, the new one gets a `503` with
//! `Retry-After` at once): see [`LocalServerBuilder::max_connections`]. A sandbox's egress
//! connections and DNS lookups in progress are capped as well. Numbers in requests are range
//! checked (`timeout_s` of a command: at most 604800), and system errors a client can cause
//! (`E2BIG`, `ENAMETOOLONG`, `ENOTDIR`, `ETXTBSY`, ...) are 4xx answers that name the cause.
//!
//! Desktops: a sandbox created `from_template("superserve/desktop")` boots an X server (Xvfb,
//! 1280×800, display `:0`, which its commands get as `DISPLAY`) through its agent, and the
//! data plane serves `superserve.boxd.v1.DesktopService` for it (Connect RPC over JSON:
//! screenshots as PNG or JPEG, pointer, keys, text and scroll through XTEST, batches and
//! steps under one input lock, resize). The X client is a small helper program inside the
//! sandbox, so the X11 protocol, which the sandbox controls, is never parsed by the backend.
//! Its live view (x11vnc and noVNC over websockify) listens on port 6080, the port
//! `get_stream_url` publishes through the preview proxy. Other sandboxes get the Connect error
//! `failed_precondition` (HTTP 400). It needs Debian's `xvfb`, `x11vnc`, `novnc` and
//! `websockify` on the host; without them creating such a sandbox fails naming them.
//!
//! It is also a test double: [`LocalServer::inject`] scripts faults (429 with `Retry-After`,
//! 5xx, dropped connections, streams cut before `finished`) and [`LocalServer::requests`]
//! shows every request received.
//!
//! The same faults can be managed over HTTP on the control plane, with the backend's API key:
//! `POST /_local/faults` (a [`FaultRule`] as JSON), `DELETE /_local/faults`,
//! `GET /_local/requests` (the journal, secrets redacted) and `DELETE /_local/requests`.
//!
//! Requirements: Linux 6.13+, root, overlayfs, user namespaces, loop devices, `mkfs.ext4`
//! (e2fsprogs), btrfs with `mkfs.btrfs` (btrfs-progs), cgroup v1 with the freezer, memory and
//! pids controllers (and `memory.memsw.*` when the host has swap). [`LocalServer::start`] fails with a [`LocalError`] naming what is
//! missing rather than run sandboxes with weaker isolation.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use superserve::local::{Fault, FaultRule, LocalServer};
//!
//! let server = LocalServer::start()?;
//! println!("SUPERSERVE_BASE_URL={}", server.base_url());
//! println!("SUPERSERVE_SANDBOX_URL={}", server.sandbox_url());
//! println!("SUPERSERVE_PREVIEW_URL={}", server.preview_url());
//! server.inject(FaultRule::new("GET", "/sandboxes/*").fault(Fault::RateLimited { retry_after_secs: 1 }));
//! let config = server.config(); // for Sandbox::create_with_config(&config, ...)
//! # let _ = config;
//! # Ok(())
//! # }
//! ```

mod agent;
mod app;
mod cgroup;
mod control;
mod data;
mod desktop;
mod desktop_api;
mod disk;
mod domain;
mod egress;
mod error;
mod exec;
mod fault;
mod files;
mod fs_sys;
mod http;
mod ident;
mod idmap;
mod image;
mod journal;
mod layers;
mod model;
// OCI image pulls; the template builder is their caller.
#[cfg_attr(not(test), allow(dead_code))]
mod oci;
mod preview;
mod preview_api;
mod preview_proxy;
mod reply;
mod runtime;
mod secrets;
mod server;
mod snapshots;
mod spares;
mod store;
mod sys;
mod templates;
mod time;
mod zip;

pub use error::LocalError;
pub use fault::{Fault, FaultRule};
pub use journal::{Plane, RecordedRequest};
pub use server::{LocalServer, LocalServerBuilder};
