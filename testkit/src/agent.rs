//! Watching a running agent from outside: its health port's `/readyz` and `/metrics`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::metrics;

/// GET `path` from `addr` (e.g. `127.0.0.1:9402`, in the caller's namespace): (status,
/// body). The request goes out in one write: the agent answers after a single read, so a
/// request split over several segments (as `write!` to a bare socket does) can be answered
/// as `/` or reset.
pub fn get_once(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let addr = addr.parse().ok()?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}

/// One `/readyz` + `/metrics` reading of an agent.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: Instant,
    /// How long the `/readyz` GET took.
    pub took: Duration,
    pub ready: Option<u16>,
    /// [`metrics::parse`] of `/metrics`.
    pub metrics: HashMap<String, f64>,
}

/// Reads each agent's `/readyz` and `/metrics` every 200 ms from a thread per agent that
/// lives in that agent's network namespace; stopped on drop.
pub struct Samplers {
    stop: Arc<AtomicBool>,
    samples: Vec<Arc<Mutex<Vec<Sample>>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Samplers {
    /// One sampler per namespace of `netns_paths` (agent `i` is the `i`-th), reading the
    /// health port at `addr` there.
    pub fn start(netns_paths: &[PathBuf], addr: &str) -> Samplers {
        let stop = Arc::new(AtomicBool::new(false));
        let mut samples = Vec::new();
        let mut threads = Vec::new();
        for path in netns_paths {
            let (path, addr) = (path.clone(), addr.to_string());
            let s = Arc::new(Mutex::new(Vec::new()));
            let (s2, stop2) = (s.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                if crate::netns::enter_path(&path).is_err() {
                    return;
                }
                while !stop2.load(Ordering::Relaxed) {
                    let at = Instant::now();
                    let ready = get_once(&addr, "/readyz").map(|r| r.0);
                    let took = at.elapsed();
                    let metrics = get_once(&addr, "/metrics")
                        .map(|(_, body)| metrics::parse(&body))
                        .unwrap_or_default();
                    if let Ok(mut v) = s2.lock() {
                        v.push(Sample {
                            at,
                            took,
                            ready,
                            metrics,
                        });
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }));
            samples.push(s);
        }
        Samplers {
            stop,
            samples,
            threads,
        }
    }

    /// Agent `i`'s samples taken at or after `t`.
    pub fn since(&self, i: usize, t: Instant) -> Vec<Sample> {
        self.samples[i]
            .lock()
            .map(|v| v.iter().filter(|s| s.at >= t).cloned().collect())
            .unwrap_or_default()
    }
}

impl Drop for Samplers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
