//! Records the commit the testbed is built from (`TESTBED_GIT_COMMIT`, empty outside a git
//! checkout), so an experiment's report names the code that ran it, not whatever the working
//! tree holds when the report is written.

fn main() {
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_default();
    println!("cargo:rustc-env=TESTBED_GIT_COMMIT={commit}");
    // A commit moves HEAD's branch file (or HEAD itself when detached).
    for path in ["../.git/HEAD", "../.git/refs/heads"] {
        if std::path::Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
