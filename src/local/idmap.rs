//! Host user/group id ranges of sandboxes: each sandbox's user namespace maps its ids
//! `0..65536` to a range of its own, `ID_BASE + slot * 65536`, far above the ids of host
//! users. A slot is claimed machine-wide (several backends may run at once, each restart must
//! find its sandboxes' ranges again: files on disk are owned by them) by creating
//! `/var/lib/superserve-local/idmap/<slot>` exclusively; the file names its data directory
//! and sandbox, and the sandbox record keeps the slot. A claim whose sandbox directory is gone
//! (a removed temporary data directory) is stale and taken over.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use rand::Rng;

/// First host id of slot 0 (2^28: far above user ids and the usual subuid ranges).
pub(crate) const ID_BASE: u32 = 1 << 28;
/// Ids per sandbox.
pub(crate) const ID_COUNT: u32 = 1 << 16;
/// Slots that fit below 2^32 - 1.
const SLOTS: u32 = (u32::MAX - ID_BASE) / ID_COUNT;
/// Where claims live.
const REGISTRY: &str = "/var/lib/superserve-local/idmap";

/// First host id of `slot`.
pub(crate) fn base(slot: u32) -> u32 {
    ID_BASE + slot * ID_COUNT
}

/// The claims of one backend (one data directory).
#[derive(Debug, Clone)]
pub(crate) struct IdRanges {
    dir: PathBuf,
    /// The data directory (canonical), as written in claims.
    owner: PathBuf,
}

impl IdRanges {
    /// The registry, created (0700) if missing.
    pub(crate) fn open(owner: &Path) -> io::Result<IdRanges> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(REGISTRY)?;
        Ok(IdRanges {
            dir: PathBuf::from(REGISTRY),
            owner: owner.to_path_buf(),
        })
    }

    fn claim_text(&self, sandbox: &str) -> String {
        format!("{}\n{sandbox}\n", self.owner.display())
    }

    /// Whether a claim's sandbox directory still exists.
    fn is_live(text: &str) -> bool {
        let mut lines = text.lines();
        match (lines.next(), lines.next()) {
            (Some(dir), Some(id)) if !id.is_empty() && !id.contains('/') => {
                Path::new(dir).join("sandboxes").join(id).exists()
            }
            _ => false,
        }
    }

    fn try_create(&self, slot: u32, text: &str) -> io::Result<bool> {
        let path = self.dir.join(slot.to_string());
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut f) => {
                f.write_all(text.as_bytes())?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let current = std::fs::read_to_string(&path).unwrap_or_default();
                if current == text {
                    return Ok(true);
                }
                // a claim being written has no newline yet: leave it alone
                if current.ends_with('\n') && !Self::is_live(&current) {
                    let _ = std::fs::remove_file(&path);
                    return self.try_create_once(&path, text);
                }
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    fn try_create_once(&self, path: &Path, text: &str) -> io::Result<bool> {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
        {
            Ok(mut f) => f.write_all(text.as_bytes()).map(|()| true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Claims a free slot for `sandbox`.
    pub(crate) fn claim(&self, sandbox: &str) -> io::Result<u32> {
        let text = self.claim_text(sandbox);
        let start = rand::thread_rng().gen_range(0..SLOTS);
        for i in 0..SLOTS {
            let slot = (start + i) % SLOTS;
            if self.try_create(slot, &text)? {
                return Ok(slot);
            }
        }
        Err(io::Error::other("every sandbox id range is taken"))
    }

    /// Makes sure `slot` is (still) claimed for `sandbox` (after a restart).
    pub(crate) fn reclaim(&self, slot: u32, sandbox: &str) -> io::Result<()> {
        if slot < SLOTS && self.try_create(slot, &self.claim_text(sandbox))? {
            return Ok(());
        }
        Err(io::Error::other(format!(
            "the sandbox's id range (slot {slot}) is claimed by another backend"
        )))
    }

    /// Releases `slot` if `sandbox` holds it.
    pub(crate) fn release(&self, slot: u32, sandbox: &str) {
        let path = self.dir.join(slot.to_string());
        if std::fs::read_to_string(&path).is_ok_and(|t| t == self.claim_text(sandbox)) {
            let _ = std::fs::remove_file(&path);
        }
    }

    /// Releases every claim of this data directory whose sandbox is not in `keep`.
    pub(crate) fn release_all_except(&self, keep: &[String]) {
        let prefix = format!("{}\n", self.owner.display());
        for e in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            if let Some(id) = text.strip_prefix(&prefix) {
                if !keep.iter().any(|k| format!("{k}\n") == id) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}
