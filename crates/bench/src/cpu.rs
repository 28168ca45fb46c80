//! Processor time spent by each party to a measurement (PostgreSQL, `caselog serve`, this
//! benchmark) and how busy the machine was, read from Linux's `/proc`. The suite runs beside
//! the database on one machine, so a side's throughput is bounded either by processor time (the
//! machine is busy: less work per event is the way on) or by latency (it is not: waiting is).
//! The figures say which.

/// `/proc` counts processor time in ticks of 1/100 s (`USER_HZ`, fixed by the kernel's ABI).
const TICKS_PER_SECOND: f64 = 100.0;

/// Processor time counters at one instant, in ticks.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    postgres: u64,
    service: u64,
    client: u64,
    machine_busy: u64,
    machine_all: u64,
}

/// Takes samples; `service` is the `caselog serve` child's process id, if there is one.
#[derive(Debug, Clone, Copy)]
pub struct Meter {
    service: Option<u32>,
}

impl Meter {
    pub fn new(service: Option<u32>) -> Meter {
        Meter { service }
    }

    /// The counters now; `None` where `/proc` cannot be read (not Linux).
    pub fn sample(&self) -> Option<Sample> {
        let (machine_busy, machine_all) = machine_ticks()?;
        Some(Sample {
            postgres: postgres_ticks(),
            service: self.service.and_then(process_ticks).unwrap_or(0),
            client: process_ticks(std::process::id())?,
            machine_busy,
            machine_all,
        })
    }
}

/// What the parties spent between two samples, summed over any number of intervals.
#[derive(Debug, Clone, Copy, Default)]
pub struct Spent {
    postgres: u64,
    service: u64,
    client: u64,
    machine_busy: u64,
    machine_all: u64,
}

impl Spent {
    /// Adds the interval from `before` to `after` (nothing when either is missing).
    pub fn add(&mut self, before: Option<Sample>, after: Option<Sample>) {
        let (Some(before), Some(after)) = (before, after) else {
            return;
        };
        self.postgres += after.postgres.saturating_sub(before.postgres);
        self.service += after.service.saturating_sub(before.service);
        self.client += after.client.saturating_sub(before.client);
        self.machine_busy += after.machine_busy.saturating_sub(before.machine_busy);
        self.machine_all += after.machine_all.saturating_sub(before.machine_all);
    }

    /// One line: processor time per event of each party, and how busy the machine was.
    pub fn per_event(&self, events: u64) -> String {
        if self.machine_all == 0 {
            return "processor time: not measured (no /proc)".into();
        }
        if events == 0 {
            return "processor time: no events to divide it by".into();
        }
        let micros = |ticks: u64| ticks as f64 / TICKS_PER_SECOND * 1e6 / events as f64;
        format!(
            "processor per event: PostgreSQL {:.1} µs, service {:.1} µs, benchmark client {:.1} µs; machine busy {:.0}%",
            micros(self.postgres),
            micros(self.service),
            micros(self.client),
            100.0 * self.machine_busy as f64 / self.machine_all as f64
        )
    }
}

/// Busy and all ticks of every processor, from the first line of `/proc/stat`.
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is within user already).
    let all: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    Some((all.saturating_sub(idle), all))
}

/// A process's user and system ticks, from `/proc/<pid>/stat`.
fn process_ticks(pid: u32) -> Option<u64> {
    stat_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?).map(|(_, ticks)| ticks)
}

/// The ticks of every process named `postgres` (the postmaster, its backends and helpers).
/// A backend that exits between two samples takes its ticks with it; the suite's connections
/// are pooled and live through a measurement.
fn postgres_ticks() -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter_map(|stat| stat_ticks(&stat))
        .filter(|(name, _)| name == "postgres")
        .map(|(_, ticks)| ticks)
        .sum()
}

/// (command name, user + system ticks) of a `/proc/<pid>/stat` line. The name is in
/// parentheses and may hold spaces, so the fields are counted from its closing one.
fn stat_ticks(stat: &str) -> Option<(String, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_owned();
    let mut after = stat.get(close + 1..)?.split_whitespace();
    // After the name: state (field 3) … utime (14) and stime (15).
    let utime: u64 = after.nth(11)?.parse().ok()?;
    let stime: u64 = after.next()?.parse().ok()?;
    Some((name, utime + stime))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_stat_line_gives_its_name_and_processor_ticks() {
        let line = "4242 (postgres: bench x) S 1 4242 4242 0 -1 4194560 900 0 0 0 1234 567 0 0 20 0 1 0 99 0 0";
        assert_eq!(stat_ticks(line), Some(("postgres: bench x".into(), 1801)));
        assert_eq!(stat_ticks("4242 (postgres"), None);
    }

    #[test]
    fn this_process_and_the_machine_are_measured() {
        let meter = Meter::new(None);
        let before = meter.sample().expect("/proc is readable on Linux");
        let mut x = 0u64;
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_millis(100) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let mut spent = Spent::default();
        spent.add(Some(before), meter.sample());
        assert!(
            spent.client >= 3,
            "100 ms of spinning shows as processor time: {spent:?}"
        );
        assert!(spent.machine_busy >= spent.client && spent.machine_all >= spent.machine_busy);
        assert!(spent.per_event(1_000).starts_with("processor per event: "));
    }
}
