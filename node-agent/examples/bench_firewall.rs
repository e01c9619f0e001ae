//! Driver of `hack/bench-firewall.sh` (a benchmark, not a test): times trellis's iptables
//! firewall check in each read mode against the rules of the network namespace it runs in,
//! and measures the peak RSS of the tools each check starts.
//!
//!   ip netns exec NS bench_firewall FLAVOUR REPS RSS_REPS TIME_LOG_DIR
//!
//! FLAVOUR is `nft` or `legacy`. It installs trellis's dual-stack rules, then runs REPS
//! rounds in which every mode checks once (modes alternate, so drift in the machine's load
//! hits all alike), then RSS_REPS checks per mode with each tool run under
//! `/usr/bin/time -f %M`. One `RESULT` line per mode on stdout; everything else on stderr.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use trellis_agent::firewall::iptables::{IptablesDriver, ReadMode, Variant};
use trellis_agent::firewall::rules::{FamilyNets, RuleSet};
use trellis_agent::firewall::tool::Exec;

struct Args {
    variant: Variant,
    flavour: String,
    reps: usize,
    rss_reps: usize,
    log_dir: PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let usage = "usage: bench_firewall nft|legacy REPS RSS_REPS TIME_LOG_DIR";
    let a: Vec<String> = std::env::args().skip(1).collect();
    let [flavour, reps, rss_reps, log_dir] = a.as_slice() else {
        return Err(usage.to_string());
    };
    let variant = match flavour.as_str() {
        "nft" => Variant::Nft,
        "legacy" => Variant::Legacy,
        other => return Err(format!("flavour {other:?}: {usage}")),
    };
    let number = |s: &str| {
        s.parse::<usize>()
            .map_err(|e| format!("{s:?} is not a count ({e}): {usage}"))
    };
    Ok(Args {
        variant,
        flavour: flavour.clone(),
        reps: number(reps)?,
        rss_reps: number(rss_reps)?,
        log_dir: PathBuf::from(log_dir),
    })
}

fn rules() -> Result<RuleSet, String> {
    let nets = |network: &str, subnet: &str| -> Result<FamilyNets, String> {
        Ok(FamilyNets {
            network: network.parse().map_err(|e| format!("{network}: {e}"))?,
            subnet: subnet.parse().map_err(|e| format!("{subnet}: {e}"))?,
        })
    };
    let v4 = nets("10.244.0.0/16", "10.244.1.0/24")?;
    let v6 = nets("fd00:10:244::/56", "fd00:10:244:1::/64")?;
    Ok(RuleSet::build(Some(v4), Some(v6), true, true))
}

fn mode_name(mode: ReadMode) -> &'static str {
    match mode {
        ReadMode::Dump => "dump",
        ReadMode::OwnChains => "own-chains",
    }
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples.get(samples.len() / 2).copied().unwrap_or_default()
}

/// Peak and count of the `%M` (KiB) lines /usr/bin/time appended to `log`.
fn peak_rss(log: &Path) -> Result<(u64, usize), String> {
    let text = std::fs::read_to_string(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let values: Vec<u64> = text
        .lines()
        .filter_map(|l| l.trim().parse::<u64>().ok())
        .collect();
    Ok((values.iter().copied().max().unwrap_or(0), values.len()))
}

async fn run(args: Args) -> Result<(), String> {
    let rules = rules()?;
    let base = IptablesDriver::detect(Exec::new(), args.variant)
        .await
        .map_err(|e| e.to_string())?;
    let default_mode = base.read_mode();
    base.apply(&rules).await.map_err(|e| e.to_string())?;
    let modes = [ReadMode::Dump, ReadMode::OwnChains];
    let executors: Vec<IptablesDriver> = modes
        .iter()
        .map(|m| base.clone().with_read_mode(*m))
        .collect();

    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); modes.len()];
    for round in 0..=args.reps {
        for (i, ex) in executors.iter().enumerate() {
            let start = Instant::now();
            let drift = ex.check(&rules).await.map_err(|e| e.to_string())?;
            let took = start.elapsed();
            if !drift.is_clean() {
                return Err(format!(
                    "{} check found drift:\n{drift}",
                    mode_name(modes[i])
                ));
            }
            // Round 0 warms the page cache and the kernel's tables; not counted.
            if round > 0 {
                times[i].push(took);
            }
        }
    }

    std::fs::create_dir_all(&args.log_dir).map_err(|e| e.to_string())?;
    for (i, mode) in modes.iter().enumerate() {
        let log = args
            .log_dir
            .join(format!("{}-{}.rss", args.flavour, mode_name(*mode)));
        let _ = std::fs::remove_file(&log);
        let log_arg = log.to_string_lossy().into_owned();
        let timed = Exec::new().with_prefix(["/usr/bin/time", "-a", "-o", &log_arg, "-f", "%M"]);
        let ex =
            IptablesDriver::new(timed, args.variant, base.random_fully()).with_read_mode(*mode);
        for _ in 0..args.rss_reps {
            ex.check(&rules).await.map_err(|e| e.to_string())?;
        }
        let (peak_kib, children) = peak_rss(&log)?;
        let med = median(&mut times[i]);
        println!(
            "RESULT flavour={} mode={} default={} checks={} median_ms={:.2} children_per_check={} peak_child_rss_kib={}",
            args.flavour,
            mode_name(*mode),
            *mode == default_mode,
            times[i].len(),
            med.as_secs_f64() * 1000.0,
            children / args.rss_reps.max(1),
            peak_kib,
        );
    }
    base.cleanup().await.map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench_firewall: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench_firewall: {e}");
            ExitCode::FAILURE
        }
    }
}
