//! `SIGUSR1` toggles operator read-only: sent to this very test process.
//! Signals are process-wide, and every test shares this process: no other
//! test installs a signal handler or signals this process, and this one
//! installs its handler before it sends (unhandled, `SIGUSR1` would end
//! the process).

use std::time::Duration;

use tower_sse::mode::{Mode, ServerMode};

fn send_sigusr1() {
    let status = std::process::Command::new("kill")
        .args(["-USR1", &std::process::id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
}

#[tokio::test]
async fn sigusr1_toggles_operator_read_only() {
    let mode = ServerMode::new();
    // Installed before this returns, so the signal below cannot kill us.
    let listener = mode.toggle_read_only_on_sigusr1().unwrap();
    let mut watch = mode.watch();

    send_sigusr1();
    tokio::time::timeout(
        Duration::from_secs(10),
        watch.wait_for(|s| s.mode == Mode::ReadOnly),
    )
    .await
    .expect("SIGUSR1 did not make the server read-only")
    .unwrap();
    assert_eq!(mode.current().reason.as_deref(), Some("operator (SIGUSR1)"));

    send_sigusr1();
    tokio::time::timeout(
        Duration::from_secs(10),
        watch.wait_for(|s| s.mode == Mode::Normal),
    )
    .await
    .expect("the second SIGUSR1 did not lift read-only")
    .unwrap();
    listener.abort();
}
