//! Every shell block of the README, run as written, in order, each against
//! what it says it needs: a running daemon (the default one, with its
//! example drivers and virtual devices), or none where the block starts
//! one itself.
//!
//! How the blocks run: `bash -euo pipefail` with `driverkit` on PATH (this
//! build), HOME and the state directory in a temporary directory, and the
//! driver projects' shared target directory kept under `target/` so that
//! runs after the first reuse it. A block naming the repository's files
//! (`examples/`, `cargo ... -p`) runs at the repository's root, the others
//! in a scratch directory. A foreground `driverkit run` in a block is
//! started in the background, waited for, and stopped after the block.
//! The first block (`cargo run -- run`, `cargo test --workspace`) is the
//! command that runs this very test: checked for its text only.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The ```sh blocks of the README, with their first line numbers.
fn shell_blocks() -> Vec<(usize, String)> {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (n, line) in readme.lines().enumerate() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some((n + 2, String::new())),
            (Some(_), "```") => blocks.push(current.take().unwrap()),
            (Some((_, text)), l) => {
                text.push_str(l);
                text.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

/// A scratch home with `driverkit` on its PATH.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("bin")).unwrap();
        std::os::unix::fs::symlink(EXE, dir.path().join("bin/driverkit")).unwrap();
        std::fs::create_dir_all(dir.path().join("work")).unwrap();
        Scratch { dir }
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Runs `block` with bash; its output, or a panic naming the block.
    fn run(&self, line: usize, block: &str) -> String {
        let cwd = if block.contains("examples/") || block.contains(" -p ") {
            repo()
        } else {
            self.dir.path().join("work")
        };
        // A foreground daemon goes to the background, is waited for, and
        // is stopped when the block ends.
        let prelude = r#"
driverkit() {
    if [ "${1:-}" = run ]; then
        command driverkit "$@" >"$HOME/run.log" 2>&1 &
        for _ in $(seq 300); do command driverkit status >/dev/null 2>&1 && break; sleep 0.1; done
        command driverkit status >/dev/null
        for _ in $(seq 300); do grep -q '^.*start    ' "$HOME/run.log" && break; sleep 0.1; done
    else
        command driverkit "$@"
    fi
}
trap 'command driverkit stop >/dev/null 2>&1 || true' EXIT
"#;
        let path = format!(
            "{}:{}",
            self.dir.path().join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = Command::new("timeout")
            .arg("600")
            .args(["bash", "-euo", "pipefail", "-c"])
            .arg(format!("{prelude}\n{block}"))
            .current_dir(&cwd)
            .env("HOME", self.dir.path())
            .env("PATH", path)
            .env("DRIVERKIT_ROOT", self.state())
            .env("XDG_CACHE_HOME", repo().join("target/readme-cache"))
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "README.md line {line}: the block failed ({}):\n{block}\n--- output ---\n{text}",
            out.status
        );
        text
    }
}

/// The default daemon, as `driverkit run` starts it, for the blocks that
/// talk to one.
fn default_daemon(scratch: &Scratch) -> std::process::Child {
    let child = Command::new(EXE)
        .args(["--root"])
        .arg(scratch.state())
        .args(["run", "--no-uinput", "--no-linux-usb"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let running = |name: &str| {
        Command::new(EXE)
            .arg("--root")
            .arg(scratch.state())
            .args(["ioreg", "-n", name])
            .output()
            .is_ok_and(|o| {
                // `ioreg -n` prints the tree around the entry: its own line
                // says whether its driver runs and registered it.
                o.status.success()
                    && String::from_utf8_lossy(&o.stdout).lines().any(|l| {
                        l.contains(&format!("-o {name}  <"))
                            && l.contains("registered")
                            && l.contains("pid")
                    })
            })
    };
    while !["HIDKeyboardDriver", "EduDriver"]
        .iter()
        .all(|n| running(n))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the default daemon did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    child
}

#[test]
fn every_shell_block_of_the_readme_runs_as_written() {
    let blocks = shell_blocks();
    assert!(blocks.len() >= 5, "{blocks:?}");
    // The first block is the README's two commands for a fresh machine.
    let (_, first) = &blocks[0];
    assert!(
        first.contains("cargo run --release -- run") && first.contains("cargo test --workspace"),
        "{first}"
    );
    for (line, block) in &blocks[1..] {
        let scratch = Scratch::new();
        let mut daemon = (!block.contains("driverkit run")).then(|| default_daemon(&scratch));
        let out = scratch.run(*line, block);
        // What each block promises, checked on its output.
        if block.contains("driverkit why") {
            assert!(
                out.contains("runs      com.example.VirtualSensorDriver"),
                "{out}"
            );
        }
        if block.contains("device record") {
            assert!(out.contains("packets in"), "{out}");
            assert!(out.contains(" C Ii:1:"), "the trace's reports:\n{out}");
        }
        if block.contains("device type") && block.contains("driverkit events") {
            // All of "Hello", not just its first key.
            for c in ["'H'", "'e'", "'l'", "'o'"] {
                assert!(
                    out.contains(c),
                    "the typed events were printed ({c}):\n{out}"
                );
            }
        }
        if block.contains("driverkit call NullDriver") {
            assert!(out.contains("42"), "{out}");
        }
        if block.contains("driverkit call EduDriver") {
            assert!(out.contains("scalars: [3628800]"), "{out}");
            assert!(out.contains("\"EduDMA\" = Yes"), "{out}");
        }
        if block.contains("sysext approve") {
            assert!(out.contains("activated enabled"), "{out}");
        }
        if block.contains("driverkit run") {
            let log = std::fs::read_to_string(scratch.dir.path().join("run.log")).unwrap();
            assert!(log.contains("start    NullDriver"), "{log}");
        }
        if let Some(mut d) = daemon.take() {
            let _ = Command::new(EXE)
                .arg("--root")
                .arg(scratch.state())
                .arg("stop")
                .output();
            let _ = d.kill();
            let _ = d.wait();
        }
    }
}
