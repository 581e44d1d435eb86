//! Messages on the control channel between the backend and a sandbox's agent.
//!
//! This file is compiled twice: into the library and into the agent program (see `build.rs`),
//! so both ends always agree. It uses `std` only and no `unsafe`. A message is one
//! `SOCK_SEQPACKET` packet: a kind byte, then fields (little-endian `u32`/`u64`, byte strings
//! as `u32` length + bytes, lists as `u32` count + items). Descriptors ride along with their
//! packet as `SCM_RIGHTS`.

/// Largest packet either side sends or accepts.
pub const MAX_MESSAGE: usize = 4 << 20;

/// Setup steps of the agent, by index (used in `SetupFailed`).
pub const SETUP_STEPS: &[&str] = &[
    "reading the setup message",
    "making mounts private",
    "creating the user namespace",
    "receiving the sandbox disk",
    "(unused: the backend mounts the disks)",
    "preparing the writable layers",
    "idmapping the read-only layers",
    "mounting the root overlay",
    "mounting the /usr overlay",
    "binding host directories",
    "mounting /proc",
    "protecting /proc",
    "mounting /dev",
    "creating device nodes",
    "setting the hostname",
    "switching to the sandbox root",
    "entering the user namespace",
    "joining a new session keyring",
    "installing the seccomp filter",
    "watching for child exits",
    "joining the sandbox cgroups",
    "creating a user namespace for a layer's owner",
    "finding a read-only layer image",
];

/// Spawn steps of a command, by index (used in `SpawnFailed`).
pub const SPAWN_STEPS: &[&str] = &[
    "forking",
    "starting a session",
    "setting up standard streams",
    "changing to the working directory",
    "dropping capabilities",
    "executing the program",
    "receiving the command's descriptors",
];

/// Index of "changing to the working directory" in [`SPAWN_STEPS`].
pub const STEP_CHDIR: u8 = 3;
/// Index of "executing the program" in [`SPAWN_STEPS`].
pub const STEP_EXEC: u8 = 5;

/// One read-only lower layer of an overlay.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lower {
    /// `0`: `path` is a directory on the host. `n > 0`: the `n`-th descriptor sent with the
    /// setup (an ext4 image's read-only detached mount) and `path` a directory inside it.
    pub image: u32,
    /// The layer's directory (absolute on the host, relative inside an image).
    pub path: Vec<u8>,
    /// The host id that owns the layer's root-owned files: it shows as the sandbox's root
    /// (0 for host directories and pulled images, the writer's id base for captured layers).
    pub owner_base: u32,
    /// Whether the mounts below `path` come along (host directories only).
    pub recursive: bool,
}

/// What the agent needs to build the sandbox (sent once, first). Descriptors ride along:
/// the first is the sandbox's disk (a read-write detached mount), then the read-only
/// images' detached mounts that [`Lower::image`] refers to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Setup {
    /// The sandbox's hostname.
    pub hostname: Vec<u8>,
    /// First host uid/gid of the sandbox's range (sandbox id 0 = host `id_base`).
    pub id_base: u32,
    /// How many ids the range holds.
    pub id_count: u32,
    /// Lower layers of the root overlay, top first.
    pub root_layers: Vec<Lower>,
    /// Lower layers of the `/usr` overlay, top first; empty: no `/usr` overlay (the root
    /// layers bring their own `/usr`).
    pub usr_layers: Vec<Lower>,
    /// Top-level host directories bound read-only into the root (non-merged-`/usr` hosts).
    pub host_dirs: Vec<Vec<u8>>,
    /// Where the root overlay is attached before `pivot_root` (an empty directory).
    pub root_dir: Vec<u8>,
    /// Capabilities commands keep (bit mask).
    pub keep_caps: u64,
    /// The highest capability number the kernel knows.
    pub last_cap: u32,
    /// The seccomp program: `struct sock_filter` array, 8 bytes per instruction.
    pub seccomp: Vec<u8>,
    /// The sandbox's cgroups, as their `tasks` files: the agent moves itself in first thing
    /// (a task moving itself skips the global lock a move by pid takes: one RCU grace period
    /// per hierarchy).
    pub cgroup_tasks: Vec<Vec<u8>>,
}

/// Most descriptors sent with a setup (the disk and the read-only layer images' mounts).
pub const MAX_SETUP_FDS: usize = 64;

/// The directories at the top of every sandbox disk: `upper` and `work` of the root overlay,
/// the same for `/usr`. The agent makes them (or takes them from a fresh disk's template,
/// which the backend makes with them, owned by host root) and gives them to the sandbox's root.
pub const WRITABLE_DIRS: [&str; 4] = ["upper", "work", "usr-upper", "usr-work"];

/// Backend → agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToAgent {
    /// Build the sandbox; descriptors: the disk's mount, then the read-only layer images'.
    Setup(Setup),
    /// Start a command. Descriptors: stdout and stderr write ends, then the stdin read end
    /// when `stdin` is set (else the command's stdin is `/dev/null`).
    Spawn {
        id: u32,
        argv: Vec<Vec<u8>>,
        env: Vec<Vec<u8>>,
        cwd: Vec<u8>,
        stdin: bool,
    },
    /// Send `sig` to the command (`group`: to its whole process group).
    Signal { id: u32, sig: i32, group: bool },
}

/// Agent → backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromAgent {
    /// The sandbox is built; commands can be started.
    Ready,
    /// Setup failed at `SETUP_STEPS[step]` with `errno`; the agent exits.
    SetupFailed { step: u8, errno: i32 },
    /// The command runs (its program was executed) as `pid` in the sandbox.
    Started { id: u32, pid: i32 },
    /// The command could not be started: `SPAWN_STEPS[step]`, `errno`.
    SpawnFailed { id: u32, step: u8, errno: i32 },
    /// The command exited; `status` as `waitpid` reports it.
    Exited { id: u32, status: i32 },
}

/// A malformed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed;

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("malformed control message")
    }
}

struct Out(Vec<u8>);

impl Out {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn i32(&mut self, v: i32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(u32::try_from(b.len()).unwrap_or(u32::MAX));
        self.0.extend_from_slice(b);
    }
    fn list(&mut self, l: &[Vec<u8>]) {
        self.u32(u32::try_from(l.len()).unwrap_or(u32::MAX));
        for b in l {
            self.bytes(b);
        }
    }
    fn lowers(&mut self, l: &[Lower]) {
        self.u32(u32::try_from(l.len()).unwrap_or(u32::MAX));
        for x in l {
            self.u32(x.image);
            self.bytes(&x.path);
            self.u32(x.owner_base);
            self.u8(u8::from(x.recursive));
        }
    }
}

struct In<'a>(&'a [u8]);

impl In<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], Malformed> {
        if self.0.len() < n {
            return Err(Malformed);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, Malformed> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn i32(&mut self) -> Result<i32, Malformed> {
        Ok(self.u32()? as i32)
    }
    fn u64(&mut self) -> Result<u64, Malformed> {
        let lo = u64::from(self.u32()?);
        let hi = u64::from(self.u32()?);
        Ok(lo | (hi << 32))
    }
    fn bytes(&mut self) -> Result<Vec<u8>, Malformed> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    fn list(&mut self) -> Result<Vec<Vec<u8>>, Malformed> {
        let n = self.u32()? as usize;
        // every item takes at least 4 bytes: a bogus count cannot make us allocate much
        if n > self.0.len() / 4 {
            return Err(Malformed);
        }
        (0..n).map(|_| self.bytes()).collect()
    }
    fn lowers(&mut self) -> Result<Vec<Lower>, Malformed> {
        let n = self.u32()? as usize;
        // every item takes at least 13 bytes
        if n > self.0.len() / 13 {
            return Err(Malformed);
        }
        (0..n)
            .map(|_| {
                Ok(Lower {
                    image: self.u32()?,
                    path: self.bytes()?,
                    owner_base: self.u32()?,
                    recursive: self.u8()? != 0,
                })
            })
            .collect()
    }
    fn end(&self) -> Result<(), Malformed> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Malformed)
        }
    }
}

impl ToAgent {
    /// The packet.
    pub fn encode(&self) -> Vec<u8> {
        let mut o = Out(Vec::new());
        match self {
            ToAgent::Setup(s) => {
                o.u8(1);
                o.bytes(&s.hostname);
                o.u32(s.id_base);
                o.u32(s.id_count);
                o.lowers(&s.root_layers);
                o.lowers(&s.usr_layers);
                o.list(&s.host_dirs);
                o.bytes(&s.root_dir);
                o.u64(s.keep_caps);
                o.u32(s.last_cap);
                o.bytes(&s.seccomp);
                o.list(&s.cgroup_tasks);
            }
            ToAgent::Spawn {
                id,
                argv,
                env,
                cwd,
                stdin,
            } => {
                o.u8(2);
                o.u32(*id);
                o.list(argv);
                o.list(env);
                o.bytes(cwd);
                o.u8(u8::from(*stdin));
            }
            ToAgent::Signal { id, sig, group } => {
                o.u8(3);
                o.u32(*id);
                o.i32(*sig);
                o.u8(u8::from(*group));
            }
        }
        o.0
    }

    /// Reads a packet.
    pub fn decode(b: &[u8]) -> Result<ToAgent, Malformed> {
        let mut i = In(b);
        let m = match i.u8()? {
            1 => ToAgent::Setup(Setup {
                hostname: i.bytes()?,
                id_base: i.u32()?,
                id_count: i.u32()?,
                root_layers: i.lowers()?,
                usr_layers: i.lowers()?,
                host_dirs: i.list()?,
                root_dir: i.bytes()?,
                keep_caps: i.u64()?,
                last_cap: i.u32()?,
                seccomp: i.bytes()?,
                cgroup_tasks: i.list()?,
            }),
            2 => ToAgent::Spawn {
                id: i.u32()?,
                argv: i.list()?,
                env: i.list()?,
                cwd: i.bytes()?,
                stdin: i.u8()? != 0,
            },
            3 => ToAgent::Signal {
                id: i.u32()?,
                sig: i.i32()?,
                group: i.u8()? != 0,
            },
            _ => return Err(Malformed),
        };
        i.end()?;
        Ok(m)
    }
}

impl FromAgent {
    /// The packet.
    pub fn encode(&self) -> Vec<u8> {
        let mut o = Out(Vec::new());
        match *self {
            FromAgent::Ready => o.u8(1),
            FromAgent::SetupFailed { step, errno } => {
                o.u8(2);
                o.u8(step);
                o.i32(errno);
            }
            FromAgent::Started { id, pid } => {
                o.u8(3);
                o.u32(id);
                o.i32(pid);
            }
            FromAgent::SpawnFailed { id, step, errno } => {
                o.u8(4);
                o.u32(id);
                o.u8(step);
                o.i32(errno);
            }
            FromAgent::Exited { id, status } => {
                o.u8(5);
                o.u32(id);
                o.i32(status);
            }
        }
        o.0
    }

    /// Reads a packet.
    pub fn decode(b: &[u8]) -> Result<FromAgent, Malformed> {
        let mut i = In(b);
        let m = match i.u8()? {
            1 => FromAgent::Ready,
            2 => FromAgent::SetupFailed {
                step: i.u8()?,
                errno: i.i32()?,
            },
            3 => FromAgent::Started {
                id: i.u32()?,
                pid: i.i32()?,
            },
            4 => FromAgent::SpawnFailed {
                id: i.u32()?,
                step: i.u8()?,
                errno: i.i32()?,
            },
            5 => FromAgent::Exited {
                id: i.u32()?,
                status: i.i32()?,
            },
            _ => return Err(Malformed),
        };
        i.end()?;
        Ok(m)
    }
}
