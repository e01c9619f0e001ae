//! Running a command from a test.

use std::io::Write;
use std::process::{Command, Output, Stdio};

/// What a finished command said: (success, stdout, stderr), both streams as text.
pub fn split(out: Output) -> (bool, String, String) {
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `cmd` to its end: (success, stdout, stderr); an error if it cannot start.
pub fn capture(cmd: &mut Command) -> std::io::Result<(bool, String, String)> {
    cmd.output().map(split)
}

/// Runs `args[0]` with the rest as arguments; panics with its output unless it succeeds.
/// Returns stdout.
pub fn run(args: &[&str]) -> String {
    let (ok, out, err) = capture(Command::new(args[0]).args(&args[1..]))
        .unwrap_or_else(|e| panic!("spawn {args:?}: {e}"));
    assert!(ok, "{args:?} failed: {out}{err}");
    out
}

/// Runs `cmd` to its end: stdout if it succeeds, else stdout followed by stderr.
pub fn output(cmd: &mut Command) -> Result<String, String> {
    stdout_or_all(capture(cmd).map_err(|e| e.to_string())?)
}

/// Runs `cmd` with `stdin` written to it: stdout if it succeeds, else stdout followed by
/// stderr.
pub fn run_with_stdin(mut cmd: Command, stdin: &str) -> Result<String, String> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    if let Some(mut si) = child.stdin.take() {
        let _ = si.write_all(stdin.as_bytes());
    }
    stdout_or_all(split(child.wait_with_output().map_err(|e| e.to_string())?))
}

fn stdout_or_all((ok, out, err): (bool, String, String)) -> Result<String, String> {
    if ok {
        Ok(out)
    } else {
        Err(format!("{out}{err}"))
    }
}
