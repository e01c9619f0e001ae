//! Running the firewall tools (`iptables-restore`, `iptables-save`, `nft`) as child processes,
//! with a deadline, stdin, captured stderr and typed errors.

use std::fmt;
use std::io;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// How long one tool may run by default. iptables waits for the xtables lock for at most
/// [`crate::firewall::iptables::DEFAULT_LOCK_WAIT`]; this leaves room for the work itself.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("cannot run `{command}`: {source} (is the tool installed and on PATH?)")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` did not finish within {timeout:?} and was killed (another process holding the xtables lock, or a stuck kernel?)")]
    Timeout { command: String, timeout: Duration },
    #[error("`{command}` failed ({status}): {stderr}{}", input_note(.input))]
    Failed {
        command: String,
        status: String,
        stderr: String,
        /// What was fed on stdin: iptables-restore and nft name the failing line by number.
        input: Option<String>,
    },
    #[error("talking to `{command}`: {source}")]
    Io {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("unexpected output from `{command}`: {reason}")]
    Output { command: String, reason: String },
}

fn input_note(input: &Option<String>) -> String {
    match input {
        Some(i) => format!("\ninput was:\n{}", numbered(i)),
        None => String::new(),
    }
}

fn numbered(text: &str) -> String {
    text.lines()
        .enumerate()
        .map(|(n, l)| format!("{:>3} {l}\n", n + 1))
        .collect()
}

impl FirewallError {
    /// The tool itself is not there (e.g. no `nft` on a host that only ever used iptables).
    pub fn is_tool_missing(&self) -> bool {
        matches!(self, FirewallError::Spawn { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// Runs commands, optionally behind a prefix such as `ip netns exec NAME` (tests, and running
/// against another network namespace than the agent's own).
#[derive(Debug, Clone)]
pub struct Exec {
    prefix: Vec<String>,
    timeout: Duration,
}

impl Default for Exec {
    fn default() -> Self {
        Exec {
            prefix: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// A command line, printed the way a person would type it again.
struct CommandLine<'a>(&'a [String], &'a str, &'a [&'a str]);

impl fmt::Display for CommandLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let words = self
            .0
            .iter()
            .map(String::as_str)
            .chain([self.1])
            .chain(self.2.iter().copied());
        for (i, w) in words.enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            if w.is_empty() || w.contains(char::is_whitespace) {
                write!(f, "'{w}'")?;
            } else {
                f.write_str(w)?;
            }
        }
        Ok(())
    }
}

impl Exec {
    pub fn new() -> Exec {
        Exec::default()
    }

    /// Every command runs as `ip netns exec NAME …`, i.e. against that network namespace.
    pub fn in_netns(name: &str) -> Exec {
        Exec::default().with_prefix(["ip", "netns", "exec", name])
    }

    pub fn with_prefix<I, S>(mut self, prefix: I) -> Exec
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.prefix = prefix.into_iter().map(Into::into).collect();
        self
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Exec {
        self.timeout = timeout;
        self
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether both run commands in the same place (same prefix).
    pub fn same_target(&self, other: &Exec) -> bool {
        self.prefix == other.prefix
    }

    /// Runs `program args…`, feeding `stdin` if given, and returns its stdout. A non-zero
    /// exit is an error carrying the tool's stderr; past the deadline the child is killed.
    pub async fn run(
        &self,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<String, FirewallError> {
        let command = CommandLine(&self.prefix, program, args).to_string();
        let mut cmd = match self.prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(program);
                c
            }
            None => Command::new(program),
        };
        cmd.args(args)
            // Error messages are shown to people and matched by nobody; C keeps them English.
            .env("LC_ALL", "C")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|source| FirewallError::Spawn {
            command: command.clone(),
            source,
        })?;
        let pipe = child.stdin.take();
        let work = async move {
            let write = async {
                if let (Some(mut pipe), Some(data)) = (pipe, stdin) {
                    pipe.write_all(data.as_bytes()).await?;
                    pipe.shutdown().await?;
                }
                Ok::<(), io::Error>(())
            };
            // Reading while writing: a tool that answers before it read everything must not
            // block on a full stdout pipe while we block on its full stdin pipe.
            tokio::join!(write, child.wait_with_output())
        };
        // On timeout `work` is dropped with the child inside it, and kill_on_drop kills it.
        let (written, output) = tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| FirewallError::Timeout {
                command: command.clone(),
                timeout: self.timeout,
            })?;
        let output = output.map_err(|source| FirewallError::Io {
            command: command.clone(),
            source,
        })?;
        if !output.status.success() {
            return Err(FirewallError::Failed {
                command,
                status: describe(output.status),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
                input: stdin.map(str::to_string),
            });
        }
        // A write error with a successful exit means the tool did not read its input.
        written.map_err(|source| FirewallError::Io {
            command: command.clone(),
            source,
        })?;
        String::from_utf8(output.stdout).map_err(|_| FirewallError::Output {
            command,
            reason: "stdout is not UTF-8".to_string(),
        })
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        (None, None) => status.to_string(),
    }
}

/// The version in a tool's `--version` output: `iptables v1.8.9 (nf_tables)` -> (1, 8, 9),
/// `nftables v1.0.6 (Lester Gooch #5)` -> (1, 0, 6). Both drivers decide features by it.
pub(crate) fn parse_version(s: &str) -> Option<(u32, u32, u32)> {
    let v = s.split_whitespace().find_map(|w| {
        w.strip_prefix('v')
            .filter(|r| r.starts_with(|c: char| c.is_ascii_digit()))
    })?;
    let mut parts = v.split('.').map(|p| {
        p.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse::<u32>()
            .ok()
    });
    let major = parts.next()??;
    let minor = parts.next().flatten().unwrap_or(0);
    let patch = parts.next().flatten().unwrap_or(0);
    Some((major, minor, patch))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn versions_parse() {
        assert_eq!(
            parse_version("iptables v1.8.9 (nf_tables)"),
            Some((1, 8, 9))
        );
        assert_eq!(parse_version("iptables v1.6.1"), Some((1, 6, 1)));
        assert_eq!(
            parse_version("ip6tables-legacy v1.8.7 (legacy)"),
            Some((1, 8, 7))
        );
        assert_eq!(
            parse_version("nftables v1.0.6 (Lester Gooch #5)"),
            Some((1, 0, 6))
        );
        assert_eq!(parse_version("iptables"), None);
    }

    #[tokio::test]
    async fn returns_stdout_and_feeds_stdin() {
        let out = Exec::new()
            .run("sh", &["-c", "tr a-z A-Z"], Some("hello\n"))
            .await
            .unwrap();
        assert_eq!(out, "HELLO\n");
    }

    #[tokio::test]
    async fn failure_carries_stderr_status_and_input() {
        let err = Exec::new()
            .run(
                "sh",
                &["-c", "cat >/dev/null; echo 'line 2 failed' >&2; exit 3"],
                Some("a\nb\n"),
            )
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, FirewallError::Failed { .. }), "{err:?}");
        assert!(msg.contains("exit code 3"), "{msg}");
        assert!(msg.contains("line 2 failed"), "{msg}");
        assert!(msg.contains("  2 b\n"), "{msg}");
        assert!(msg.contains("sh -c 'cat"), "{msg}");
    }

    #[tokio::test]
    async fn a_missing_tool_is_a_spawn_error() {
        let err = Exec::new()
            .run("trellis-no-such-tool", &[], None)
            .await
            .unwrap_err();
        assert!(err.is_tool_missing(), "{err:?}");
    }

    #[tokio::test]
    async fn a_hung_tool_is_killed_at_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let script = format!("echo $$ > {}; exec sleep 10", pidfile.display());
        let start = Instant::now();
        let err = Exec::new()
            .with_timeout(Duration::from_millis(300))
            .run("sh", &["-c", &script], None)
            .await
            .unwrap_err();
        assert!(matches!(err, FirewallError::Timeout { .. }), "{err:?}");
        assert!(start.elapsed() < Duration::from_secs(3));
        let pid = std::fs::read_to_string(&pidfile).unwrap();
        // Gone, or a zombie waiting for tokio's reaper: either way no longer sleeping.
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()));
            let alive = stat.is_ok_and(|s| !s.contains(") Z "));
            if !alive {
                break;
            }
            assert!(Instant::now() < deadline, "the timed-out child still runs");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn prefix_is_prepended() {
        let out = Exec::new()
            .with_prefix(["env", "TRELLIS_X=1"])
            .run("sh", &["-c", "echo $TRELLIS_X"], None)
            .await
            .unwrap();
        assert_eq!(out, "1\n");
    }
}
