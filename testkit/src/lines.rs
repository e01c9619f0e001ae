//! Long-running commands whose output a test reads while they run (`ip monitor`, ...).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Commands whose stdout lines are recorded with the time each arrived, read on a thread
/// per command; every command is killed on drop.
#[derive(Default)]
pub struct Recorder {
    children: Vec<Child>,
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder::default()
    }

    /// Starts `cmd` (stderr discarded) and records its stdout with the others'.
    pub fn spawn(&mut self, mut cmd: Command) -> std::io::Result<()> {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?;
        let out = child.stdout.take().expect("piped stdout");
        let l = self.lines.clone();
        self.readers.push(std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(mut v) = l.lock() {
                    v.push((Instant::now(), line));
                }
            }
        }));
        self.children.push(child);
        Ok(())
    }

    /// Every line so far, with the time it arrived, in arrival order.
    pub fn lines(&self) -> Vec<(Instant, String)> {
        self.lines.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }
}
