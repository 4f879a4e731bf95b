//! A small tmpfs for full-disk tests (shared by the paxos and node tests through `#[path]`).
#![allow(dead_code)]

use std::io::Write as _;
use std::process::Command;

/// A tmpfs of a few MiB mounted for one test and unmounted when dropped.
pub struct SmallDisk {
    /// Where the tmpfs is mounted.
    pub path: std::path::PathBuf,
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// `None` (after a loud message) when this process may not mount; under `CI=true` that is a
    /// failure: CI runs as root.
    pub fn mount(mib: u32) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::create_dir(&path).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but a tmpfs could not be mounted (CI runs as root)"
            );
            eprintln!("SKIPPED: the full-disk test needs root to mount a tmpfs");
            return None;
        }
        Some(SmallDisk { path, dir })
    }

    /// A path next to the mount point, on the ordinary disk.
    pub fn beside(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// Frees the space `fill` took.
    pub fn free(&self) {
        let _ = std::fs::remove_file(self.path.join("filler"));
    }

    /// Fills the disk up to its last few KiB.
    pub fn fill(&self) {
        let mut filler = std::fs::File::create(self.path.join("filler")).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while filler.write_all(&chunk).is_ok() {}
        let _ = filler.sync_all();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Fills the disk, then keeps calling `write` (something that makes `child` write) until the
/// child exits; returns its exit status and everything it printed on stderr. Panics (after
/// killing it) if it is still running after 30 s.
pub async fn fill_until_exit(
    disk: &SmallDisk,
    child: &mut std::process::Child,
    mut write: impl AsyncFnMut(),
) -> (std::process::ExitStatus, String) {
    disk.fill();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the process kept running on a full disk");
        }
        write().await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status, stderr)
}
