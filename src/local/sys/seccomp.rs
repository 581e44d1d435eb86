//! The sandbox's seccomp filter: a deny-list in the spirit of Docker's default profile,
//! compiled here to classic BPF and installed by the agent on itself (every command inherits
//! it).
//!
//! Blocked with `EPERM`: keyrings (`keyctl`, `add_key`, `request_key`), `bpf`,
//! `perf_event_open`, `userfaultfd`, `kexec_*`, kernel modules, the whole mount family,
//! `setns`, `unshare`/`clone` with any namespace flag (no nested user namespaces),
//! `open_by_handle_at`/`name_to_handle_at`, `io_uring_*` (its operations bypass seccomp),
//! swap, reboot, accounting, quotas, `syslog`, port I/O, and `personality` beyond the
//! harmless values. `clone3` gets `ENOSYS` (its flags live in memory a filter cannot read;
//! the C library falls back to `clone`). System calls of another architecture or ABI (x32)
//! kill the process. `ptrace` stays allowed (debuggers inside the sandbox): processes outside
//! are not in the sandbox's PID namespace, and its init is protected by its user namespace.

/// `SECCOMP_RET_*` actions.
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_ALLOW: u32 = 0x7fff_0000;

/// BPF opcodes.
const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const JGE_K: u16 = 0x35;
const JSET_K: u16 = 0x45;
const RET_K: u16 = 0x06;

/// Offsets in `struct seccomp_data`.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
/// Low 32 bits of the first argument (little-endian).
const OFF_ARG0: u32 = 16;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;
/// x32 system calls have this bit set on x86-64.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// `open_tree_attr` (Linux 6.15; same number on every architecture).
const SYS_OPEN_TREE_ATTR: i64 = 467;

/// Namespace flags that `clone` may not use (the low byte of clone's flags is the exit
/// signal, so `CLONE_NEWTIME` is only checked for `unshare`).
const CLONE_NS_FLAGS: u32 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u32;
const UNSHARE_NS_FLAGS: u32 = CLONE_NS_FLAGS | 0x80 /* CLONE_NEWTIME */;

/// `personality` values allowed (as Docker): PER_LINUX, PER_LINUX32, UNAME26 variants, query.
const PERSONALITIES: &[u32] = &[0x0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];

fn denied() -> Vec<i64> {
    let mut v = vec![
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_userfaultfd,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_move_mount,
        libc::SYS_open_tree,
        libc::SYS_fsopen,
        libc::SYS_fsconfig,
        libc::SYS_fsmount,
        libc::SYS_fspick,
        libc::SYS_mount_setattr,
        SYS_OPEN_TREE_ATTR,
        libc::SYS_setns,
        libc::SYS_open_by_handle_at,
        libc::SYS_name_to_handle_at,
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_reboot,
        libc::SYS_acct,
        libc::SYS_quotactl,
        libc::SYS_quotactl_fd,
        libc::SYS_syslog,
        libc::SYS_fanotify_init,
        libc::SYS_process_madvise,
    ];
    #[cfg(target_arch = "x86_64")]
    v.extend([
        libc::SYS_iopl,
        libc::SYS_ioperm,
        libc::SYS_uselib,
        libc::SYS_lookup_dcookie,
        libc::SYS_nfsservctl,
    ]);
    v
}

struct Prog(Vec<[u8; 8]>);

impl Prog {
    fn op(&mut self, code: u16, jt: u8, jf: u8, k: u32) {
        let mut b = [0u8; 8];
        b[0..2].copy_from_slice(&code.to_ne_bytes());
        b[2] = jt;
        b[3] = jf;
        b[4..8].copy_from_slice(&k.to_ne_bytes());
        self.0.push(b);
    }
    fn ret(&mut self, action: u32) {
        self.op(RET_K, 0, 0, action);
    }
}

/// The filter as `struct sock_filter` bytes (8 per instruction), ready for the agent.
pub(crate) fn program() -> Vec<u8> {
    let eperm = RET_ERRNO | libc::EPERM as u32;
    let mut p = Prog(Vec::new());
    p.op(LD_W_ABS, 0, 0, OFF_ARCH);
    p.op(JEQ_K, 1, 0, AUDIT_ARCH);
    p.ret(RET_KILL_PROCESS);
    p.op(LD_W_ABS, 0, 0, OFF_NR);
    if cfg!(target_arch = "x86_64") {
        p.op(JGE_K, 0, 1, X32_SYSCALL_BIT);
        p.ret(RET_KILL_PROCESS);
    }
    for nr in denied() {
        p.op(JEQ_K, 0, 1, nr as u32);
        p.ret(eperm);
    }
    p.op(JEQ_K, 0, 1, libc::SYS_clone3 as u32);
    p.ret(RET_ERRNO | libc::ENOSYS as u32);
    for (nr, flags) in [
        (libc::SYS_clone, CLONE_NS_FLAGS),
        (libc::SYS_unshare, UNSHARE_NS_FLAGS),
    ] {
        // not this call: skip the 4 instructions that check it
        p.op(JEQ_K, 0, 4, nr as u32);
        p.op(LD_W_ABS, 0, 0, OFF_ARG0);
        p.op(JSET_K, 0, 1, flags);
        p.ret(eperm);
        p.ret(RET_ALLOW);
    }
    let n = PERSONALITIES.len() as u8;
    p.op(JEQ_K, 0, n + 3, libc::SYS_personality as u32);
    p.op(LD_W_ABS, 0, 0, OFF_ARG0);
    for (i, v) in PERSONALITIES.iter().enumerate() {
        // a match jumps over the remaining checks and the EPERM to ALLOW
        p.op(JEQ_K, n - i as u8, 0, *v);
    }
    p.ret(eperm);
    p.ret(RET_ALLOW);
    p.ret(RET_ALLOW);
    p.0.concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny classic-BPF interpreter for the opcodes the filter uses.
    fn run(prog: &[u8], arch: u32, nr: i64, arg0: u64) -> u32 {
        let ins: Vec<(u16, u8, u8, u32)> = prog
            .chunks(8)
            .map(|c| {
                (
                    u16::from_ne_bytes([c[0], c[1]]),
                    c[2],
                    c[3],
                    u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
                )
            })
            .collect();
        let (mut pc, mut a) = (0usize, 0u32);
        loop {
            let (code, jt, jf, k) = ins[pc];
            pc += 1;
            match code {
                LD_W_ABS => {
                    a = match k {
                        OFF_NR => nr as u32,
                        OFF_ARCH => arch,
                        OFF_ARG0 => arg0 as u32,
                        _ => panic!("load of {k}"),
                    }
                }
                JEQ_K => pc += usize::from(if a == k { jt } else { jf }),
                JGE_K => pc += usize::from(if a >= k { jt } else { jf }),
                JSET_K => pc += usize::from(if a & k != 0 { jt } else { jf }),
                RET_K => return k,
                _ => panic!("opcode {code:#x}"),
            }
        }
    }

    #[test]
    fn filter_decisions() {
        let p = program();
        let eperm = RET_ERRNO | libc::EPERM as u32;
        let r = |nr: i64, arg0: u64| run(&p, AUDIT_ARCH, nr, arg0);
        assert_eq!(r(libc::SYS_read, 0), RET_ALLOW);
        assert_eq!(r(libc::SYS_ptrace, 0), RET_ALLOW);
        assert_eq!(r(libc::SYS_keyctl, 0), eperm);
        assert_eq!(r(libc::SYS_bpf, 0), eperm);
        assert_eq!(r(libc::SYS_mount, 0), eperm);
        assert_eq!(r(libc::SYS_io_uring_setup, 0), eperm);
        assert_eq!(r(libc::SYS_clone3, 0), RET_ERRNO | libc::ENOSYS as u32);
        let fork_flags = (libc::CLONE_CHILD_SETTID | libc::SIGCHLD) as u64;
        assert_eq!(r(libc::SYS_clone, fork_flags), RET_ALLOW);
        assert_eq!(r(libc::SYS_clone, libc::CLONE_NEWUSER as u64), eperm);
        assert_eq!(r(libc::SYS_unshare, libc::CLONE_FILES as u64), RET_ALLOW);
        assert_eq!(r(libc::SYS_unshare, libc::CLONE_NEWNET as u64), eperm);
        assert_eq!(r(libc::SYS_unshare, 0x80), eperm, "CLONE_NEWTIME");
        assert_eq!(r(libc::SYS_personality, 0xffff_ffff), RET_ALLOW);
        assert_eq!(
            r(libc::SYS_personality, 0x0040_0000),
            eperm,
            "READ_IMPLIES_EXEC"
        );
        assert_eq!(
            run(&p, 0x4000_0003, libc::SYS_read, 0),
            RET_KILL_PROCESS,
            "i386"
        );
        #[cfg(target_arch = "x86_64")]
        assert_eq!(r(0x4000_0000 | libc::SYS_read, 0), RET_KILL_PROCESS, "x32");
    }
}
