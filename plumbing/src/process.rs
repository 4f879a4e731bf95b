//! Processes: the shutdown signal every binary waits for, and children that die with their
//! parent.

/// Resolves on Ctrl-C or SIGTERM (what Kubernetes and the testbed send to stop a process).
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// A command whose child the kernel kills (SIGKILL) when the process that spawned it dies, even
/// by SIGKILL: a test, testbed or load test that crashes leaves no cluster behind.
pub trait DieWithParent {
    /// Arranges `PR_SET_PDEATHSIG(SIGKILL)` in the child; returns the command for chaining.
    fn die_with_parent(&mut self) -> &mut Self;
}

/// Runs in the child between fork and exec.
fn set_parent_death_signal() -> std::io::Result<()> {
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl DieWithParent for std::process::Command {
    fn die_with_parent(&mut self) -> &mut Self {
        use std::os::unix::process::CommandExt as _;
        // SAFETY: the closure only calls prctl (async-signal-safe); nothing else runs between
        // fork and exec.
        unsafe { self.pre_exec(set_parent_death_signal) }
    }
}

impl DieWithParent for tokio::process::Command {
    fn die_with_parent(&mut self) -> &mut Self {
        // SAFETY: as above.
        unsafe { self.pre_exec(set_parent_death_signal) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The child asks the kernel for its own parent-death signal (`prctl(PR_GET_PDEATHSIG)`):
    /// SIGKILL (9) with `die_with_parent`, none (0) without.
    fn death_signal_of_a_child(die_with_parent: bool) -> String {
        let mut command = std::process::Command::new("python3");
        command.args([
            "-c",
            "import ctypes; s = ctypes.c_int(); \
             ctypes.CDLL(None).prctl(2, ctypes.byref(s)); print(s.value)",
        ]);
        if die_with_parent {
            command.die_with_parent();
        }
        let output = command.output().expect("python3 runs");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    #[test]
    fn the_child_carries_the_parent_death_signal() {
        assert_eq!(death_signal_of_a_child(true), "9");
        assert_eq!(death_signal_of_a_child(false), "0");
    }

    #[tokio::test]
    async fn a_tokio_child_carries_it_too() {
        let output = tokio::process::Command::new("python3")
            .args([
                "-c",
                "import ctypes; s = ctypes.c_int(); \
                 ctypes.CDLL(None).prctl(2, ctypes.byref(s)); print(s.value)",
            ])
            .die_with_parent()
            .output()
            .await
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "9");
    }
}
