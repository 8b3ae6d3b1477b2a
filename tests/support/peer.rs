//! How a test reports a peer it cannot find (a Python package, NVRTC): it says `SKIPPED` in the summary
//! `scripts/test.sh` prints after `cargo test` (a line appended to `$GPTOSS_SKIP_LOG`) instead of passing
//! silently, and fails outright when the environment variable `require` names is set (CI installs every
//! peer, so it cannot pass by skipping). Included by the tests that drive peers with `#[path]`.

use std::io::Write;

/// Records that `test` did not run because `why`; panics when `require` is set in the environment.
pub fn skipped(test: &str, why: &str, require: &str) {
    assert!(
        std::env::var_os(require).is_none(),
        "{test}: {why} ({require} is set, so a missing peer is a failure)"
    );
    // One line per skipped test in the summary.
    let why = why.split_whitespace().collect::<Vec<_>>().join(" ");
    println!("SKIPPED {test}: {why}");
    if let Some(path) = std::env::var_os("GPTOSS_SKIP_LOG") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{test}: {why}");
        }
    }
}
