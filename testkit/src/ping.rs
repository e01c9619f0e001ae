//! A 20 ms ping loop with receive timestamps (`ping -D`), read on a thread.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct PingLoop {
    /// What the loop measures, for reports (e.g. `node-1->node-2`).
    pub label: String,
    child: Child,
    /// (icmp_seq, unix time of the reply)
    replies: Arc<Mutex<Vec<(u64, f64)>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// Unix time in seconds, the clock of [`PingLoop`]'s reply times (`ping -D`).
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl PingLoop {
    /// Pings `to` every 20 ms from inside the network namespace `netns`.
    pub fn start(netns: &str, to: &str, label: impl Into<String>) -> PingLoop {
        let mut child = Command::new("ip")
            .args(["netns", "exec", netns])
            .args(["ping", "-D", "-n", "-i", "0.02", "-W", "1", to])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("ping loop");
        let out = child.stdout.take().expect("ping stdout");
        let replies = Arc::new(Mutex::new(Vec::new()));
        let r = replies.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(x) = parse_ping_line(&line) {
                    if let Ok(mut v) = r.lock() {
                        v.push(x);
                    }
                }
            }
        });
        PingLoop {
            label: label.into(),
            child,
            replies,
            reader: Some(reader),
        }
    }

    /// The replies so far: (icmp_seq, unix time).
    pub fn snapshot(&self) -> Vec<(u64, f64)> {
        self.replies.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// (replies, lost, longest gap) among replies received in [from, to] (unix time).
    pub fn window(&self, from: f64, to: f64) -> (usize, u64, Duration) {
        let v = self.snapshot();
        let mut n = 0;
        let mut lost = 0;
        let mut gap = 0.0f64;
        for w in v.windows(2) {
            let ((s0, t0), (s1, t1)) = (w[0], w[1]);
            if t1 >= from && t0 <= to {
                n += 1;
                lost += s1.saturating_sub(s0 + 1);
                gap = gap.max(t1 - t0);
            }
        }
        (n, lost, Duration::from_secs_f64(gap.max(0.0)))
    }

    /// Longest interval without a reply overlapping [from, to] (up to `to` after the last
    /// reply), and the number of sequence numbers missing among replies in that window.
    pub fn gap(&self, from: f64, to: f64) -> (Duration, u64) {
        let v = self.snapshot();
        let mut longest = 0.0f64;
        let mut lost = 0;
        for w in v.windows(2) {
            let ((s0, t0), (s1, t1)) = (w[0], w[1]);
            if t1 >= from && t0 <= to {
                longest = longest.max(t1 - t0);
                lost += s1.saturating_sub(s0 + 1);
            }
        }
        if let Some(&(_, t)) = v.last() {
            if t < to {
                longest = longest.max(to - t);
            }
        }
        (Duration::from_secs_f64(longest.max(0.0)), lost)
    }
}

impl Drop for PingLoop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// `[1763777777.123456] 64 bytes from 10.244.2.2: icmp_seq=7 ttl=62 time=0.1 ms` →
/// `(7, 1763777777.123456)`; other lines → `None`.
pub fn parse_ping_line(line: &str) -> Option<(u64, f64)> {
    if !line.contains("bytes from") {
        return None;
    }
    let ts = line.strip_prefix('[')?.split(']').next()?.parse().ok()?;
    let seq = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("icmp_seq="))?
        .parse()
        .ok()?;
    Some((seq, ts))
}

/// (transmitted, received) from the summary a finished `ping` prints
/// (`150 packets transmitted, 149 received, ...`); zeros where it printed none.
pub fn summary(output: &str) -> (u64, u64) {
    let nums: Vec<u64> = output
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or("")
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|s| s.parse().ok())
        .collect();
    (
        nums.first().copied().unwrap_or(0),
        nums.get(1).copied().unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_summary_and_reply_lines() {
        let out = "PING 10.244.2.2 (10.244.2.2) 56(84) bytes of data.\n\n--- 10.244.2.2 ping statistics ---\n150 packets transmitted, 149 received, 0.66% packet loss, time 1500ms\n";
        assert_eq!(super::summary(out), (150, 149));
        assert_eq!(super::summary(""), (0, 0));
        assert_eq!(
            super::parse_ping_line(
                "[1763777777.123456] 64 bytes from 10.244.2.2: icmp_seq=7 ttl=62 time=0.1 ms"
            ),
            Some((7, 1763777777.123456))
        );
        assert_eq!(super::parse_ping_line(out.lines().next().unwrap()), None);
    }
}
