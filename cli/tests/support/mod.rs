//! The `stunfwd` binary as a child process, for the CLI tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_stunfwd");

/// A child process killed on drop. Its stdout lines arrive on a channel and are also
/// kept whole (`terminate_with_stdout`).
pub struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    transcript: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
    /// stderr is read as it comes, so a chatty child never blocks on a full pipe.
    stderr: Option<JoinHandle<String>>,
}

impl Proc {
    pub fn spawn(args: &[&str]) -> Proc {
        Proc::spawn_in(args, &std::env::current_dir().unwrap())
    }

    /// [`Proc::spawn`] with `dir` as the working directory.
    pub fn spawn_in(args: &[&str], dir: &std::path::Path) -> Proc {
        let mut child = Command::new(BIN)
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out: ChildStdout = child.stdout.take().unwrap();
        let mut err_pipe = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut err = String::new();
            let _ = err_pipe.read_to_string(&mut err);
            err
        });
        let (tx, rx) = mpsc::channel();
        let transcript = Arc::new(Mutex::new(Vec::new()));
        let kept = transcript.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                kept.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        Proc {
            child,
            lines: rx,
            transcript,
            reader: Some(reader),
            stderr: Some(stderr),
        }
    }

    /// The first stdout line starting with `prefix`, within 20 s.
    pub fn wait_line(&self, prefix: &str) -> String {
        self.wait_line_within(prefix, Duration::from_secs(20))
            .unwrap_or_else(|| panic!("no line starting with {prefix:?} within 20 s"))
    }

    /// The first stdout line not yet taken that starts with `prefix`, within `limit`.
    pub fn wait_line_within(&self, prefix: &str, limit: Duration) -> Option<String> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return Some(l),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    /// Every stdout line so far (also those taken by `wait_line`).
    pub fn lines_so_far(&self) -> Vec<String> {
        self.transcript.lock().unwrap().clone()
    }

    /// SIGKILL: the process dies without a word to its peer or the rendezvous.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then everything it wrote to stderr; panics unless it exits with 0.
    pub fn terminate(self) -> String {
        self.terminate_with_stdout().1
    }

    /// SIGTERM, then its whole stdout (every line since start) and stderr; panics
    /// unless it exits with 0.
    pub fn terminate_with_stdout(mut self) -> (Vec<String>, String) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) on our own child, which has not been waited for yet.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill({pid}, SIGTERM)");
        let code = self.child.wait().unwrap();
        let err = self
            .stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        assert!(code.success(), "exit {code:?}; stderr:\n{err}");
        let out = std::mem::take(&mut *self.transcript.lock().unwrap());
        (out, err)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
