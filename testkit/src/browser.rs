//! Headless Chromium (Debian's `chromium`) for the tests of pages: find it, render a page
//! after its scripts ran, and collect what it wrote to its console.
//!
//! Outside CI a test without Chromium skips loudly ([`chromium_or_skip`]); under `CI=true` it
//! fails instead (`.ci/run` installs it).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Chromium's path: `$CHROMIUM`, else the first of `chromium`, `chromium-browser`,
/// `google-chrome` on the `PATH`.
pub fn chromium() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("CHROMIUM") {
        return Some(path.into());
    }
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            let found = Command::new("which").arg(name).output().ok()?;
            found
                .status
                .success()
                .then(|| String::from_utf8_lossy(&found.stdout).trim().into())
        })
}

/// Chromium, or `None` after a loud SKIPPED line naming `test`; panics under `CI=true`.
pub fn chromium_or_skip(test: &str) -> Option<PathBuf> {
    let found = chromium();
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but chromium is not installed: .ci/run must apt-get install chromium"
        );
        eprintln!("\n*** SKIPPED {test}: chromium not found (apt-get install chromium) ***\n");
    }
    found
}

/// What a page rendered to.
#[derive(Clone, Debug)]
pub struct Rendered {
    /// The DOM after the scripts ran (`--dump-dom`).
    pub dom: String,
    /// Every console message and uncaught error of the page, one per line as Chromium logs them
    /// (`"text", source: URL (line)`).
    pub console: Vec<String>,
    /// Chromium's standard error, whole.
    pub stderr: String,
}

/// Headless Chromium with the profile in `profile` and nothing that reaches the network on its
/// own (no sandbox: tests run as root in CI); add flags and the URL.
pub fn headless(browser: &Path, profile: &Path) -> Command {
    let mut command = Command::new(browser);
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-quic",
        ])
        .arg(format!("--user-data-dir={}", profile.display()));
    command
}

/// Renders `url` with a fresh profile in `profile`; `extra` flags go before the URL (for
/// example `--virtual-time-budget=3000` to let timers run). Panics if Chromium fails.
pub fn render(browser: &Path, profile: &Path, extra: &[&str], url: &str) -> Rendered {
    let out = headless(browser, profile)
        .args(["--enable-logging=stderr", "--v=0", "--dump-dom"])
        .args(extra)
        .arg(url)
        .output()
        .expect("running chromium");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "chromium failed on {url}: {stderr}");
    let console = stderr
        .lines()
        .filter_map(|line| line.split_once(":CONSOLE").map(|(_, rest)| rest))
        .map(|rest| rest.split_once("] ").map_or(rest, |(_, m)| m).to_owned())
        .collect();
    Rendered {
        dom: String::from_utf8_lossy(&out.stdout).into_owned(),
        console,
        stderr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The console check catches what it is for: a page that logs an error, and one with an
    /// uncaught exception, have console lines; a quiet page has none.
    #[test]
    fn console_messages_and_errors_are_collected() {
        let Some(browser) = chromium_or_skip("console_messages_and_errors_are_collected") else {
            return;
        };
        let dir = std::env::temp_dir().join(format!("testkit-browser-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let page = |name: &str, script: &str| {
            let path = dir.join(name);
            std::fs::write(
                &path,
                format!("<!doctype html><html><body><p id='x'>hi</p><script>{script}</script></body></html>"),
            )
            .unwrap();
            format!("file://{}", path.display())
        };
        let noisy = render(
            &browser,
            &dir.join("profile-1"),
            &[],
            &page("noisy.html", "console.error('boom'); null.x;"),
        );
        assert!(noisy.dom.contains("<p id=\"x\">hi</p>"), "{}", noisy.dom);
        assert!(
            noisy.console.iter().any(|l| l.contains("boom")),
            "{:?}",
            noisy.stderr
        );
        assert!(
            noisy.console.iter().any(|l| l.contains("TypeError")),
            "{:?}",
            noisy.console
        );
        let quiet = render(
            &browser,
            &dir.join("profile-2"),
            &[],
            &page("quiet.html", ""),
        );
        assert!(quiet.console.is_empty(), "{:?}", quiet.console);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
