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

/// The demo example (or another example that prints `listening on
/// http://ADDR` on stdout as it does), running as a process of its own on
/// a free loopback port: `cargo test` builds the examples beside the test
/// binary (a run of `--test it` alone does not: `cargo build --example
/// demo` first).
pub struct Demo {
    child: tokio::process::Child,
    addr: std::net::SocketAddr,
}

impl Demo {
    /// Starts it with `args` (after `--addr 127.0.0.1:0`) and `env`; waits
    /// for the address it prints.
    pub async fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_example("demo", args, env).await
    }

    /// Starts the example `name` with `args` (after `--addr 127.0.0.1:0`)
    /// and `env`; waits for the address it prints.
    pub async fn start_example(name: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut all = vec!["--addr", "127.0.0.1:0"];
        all.extend_from_slice(args);
        Self::launch(name, &all, env).await
    }

    /// Starts the example `name` with exactly `args` and `env` (no
    /// `--addr`: where it listens is up to them, `PORT` say); waits for
    /// the address it prints. `PORT` is unset unless `env` sets it.
    pub async fn launch(name: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        use tokio::io::{AsyncBufReadExt, BufReader};

        let binary = Self::example(name);
        let mut child = Command::new(&binary)
            .args(args)
            .env_remove("PORT")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start the {name} example: {e}"));
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let waiting = format!("the {name} example to listen");
        let addr = super::wait::within(&waiting, async {
            while let Some(line) = lines.next_line().await.expect("the example's output") {
                if let Some(rest) = line.strip_prefix("listening on http://") {
                    let addr = rest.split_whitespace().next().unwrap_or_default();
                    return addr.parse().expect("the example's address");
                }
            }
            panic!("the {name} example exited before listening");
        })
        .await;
        // Keep reading its output, or it blocks once the pipe fills.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self { child, addr }
    }

    /// Where `cargo test` put the demo; fails the test if it is not there.
    pub fn binary() -> std::path::PathBuf {
        Self::example("demo")
    }

    /// Where `cargo test` put the example `name`; fails the test if it is
    /// not there.
    pub fn example(name: &str) -> std::path::PathBuf {
        let test_binary = std::env::current_exe().expect("the test binary");
        let examples = test_binary
            .parent()
            .and_then(std::path::Path::parent)
            .expect("the target directory")
            .join("examples");
        let binary = examples.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
        assert!(
            binary.exists(),
            "{} is missing: `cargo test` builds it (or `cargo build --example {name}`)",
            binary.display()
        );
        binary
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// Waits until its `/ready` answers `200` (with `--redis`: in step
    /// with Redis).
    pub async fn ready(&self) {
        super::wait::eventually_async("the demo to be ready", || async {
            super::client::fetch(self.addr, http::Method::GET, "/ready", &[], "")
                .await
                .status
                == http::StatusCode::OK
        })
        .await;
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
