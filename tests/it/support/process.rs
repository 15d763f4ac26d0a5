//! A process of its own for a test that measures the whole process (its
//! resident memory): in the suite's process, it would count what other
//! tests allocate meanwhile, and reuse what they freed before.

use tokio::process::Command;

/// Set in a process that runs one test alone.
const ALONE: &str = "TOWER_SSE_TEST_ALONE";

/// Whether the calling test, `name` (its path in this binary, as the
/// harness lists it), runs its body here. In a process of its own, it
/// does. Otherwise this runs the test again in a new process of this
/// binary, alone, fails the test if it fails there, and answers `false`.
pub async fn alone(name: &str) -> bool {
    if std::env::var_os(ALONE).is_some() {
        return true;
    }
    let binary = std::env::current_exe().expect("the test binary");
    let output = Command::new(binary)
        .args(["--exact", name, "--test-threads=1"])
        .env(ALONE, "1")
        .output()
        .await
        .expect("run the test binary");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && report.contains("1 passed"),
        "{name}, alone in a process: {}\n{report}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    false
}
