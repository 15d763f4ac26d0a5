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

/// The demo example, running as a process of its own on a free loopback
/// port: `cargo test` builds the examples beside the test binary (a run of
/// `--test it` alone does not: `cargo build --example demo` first).
pub struct Demo {
    child: tokio::process::Child,
    addr: std::net::SocketAddr,
}

impl Demo {
    /// Starts it with `args` (after `--addr 127.0.0.1:0`) and `env`; waits
    /// for the address it prints.
    pub async fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        use tokio::io::{AsyncBufReadExt, BufReader};

        let binary = Self::binary();
        let mut child = Command::new(&binary)
            .args(["--addr", "127.0.0.1:0"])
            .args(args)
            .envs(env.iter().copied())
            .env_remove("PORT")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start the demo");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let addr = super::wait::within("the demo to listen", async {
            while let Some(line) = lines.next_line().await.expect("the demo's output") {
                if let Some(rest) = line.strip_prefix("listening on http://") {
                    let addr = rest.split_whitespace().next().unwrap_or_default();
                    return addr.parse().expect("the demo's address");
                }
            }
            panic!("the demo exited before listening");
        })
        .await;
        // Keep reading its output, or it blocks once the pipe fills.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self { child, addr }
    }

    /// Where `cargo test` put the demo; fails the test if it is not there.
    pub fn binary() -> std::path::PathBuf {
        let test_binary = std::env::current_exe().expect("the test binary");
        let examples = test_binary
            .parent()
            .and_then(std::path::Path::parent)
            .expect("the target directory")
            .join("examples");
        let binary = examples.join(format!("demo{}", std::env::consts::EXE_SUFFIX));
        assert!(
            binary.exists(),
            "{} is missing: `cargo test` builds it (or `cargo build --example demo`)",
            binary.display()
        );
        binary
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
