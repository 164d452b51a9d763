//! Kernel timestamps (CLOCK_BOOTTIME) to wall-clock time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy)]
pub struct BootClock {
    /// Wall-clock nanoseconds since the epoch at boot.
    boot_epoch_ns: i128,
}

fn now_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a valid out pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

impl BootClock {
    pub fn new() -> Self {
        Self {
            boot_epoch_ns: now_ns(libc::CLOCK_REALTIME) - now_ns(libc::CLOCK_BOOTTIME),
        }
    }

    #[cfg(test)]
    pub fn with_boot_epoch_ns(boot_epoch_ns: i128) -> Self {
        Self { boot_epoch_ns }
    }

    pub fn to_system_time(self, boot_ns: u64) -> SystemTime {
        let ns = (self.boot_epoch_ns + i128::from(boot_ns)).max(0);
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    }
}

pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

/// `HH:MM:SS.micros` (UTC) for the human output.
pub fn time_of_day(t: SystemTime) -> String {
    let s = rfc3339(t);
    s.get(11..26).unwrap_or(&s).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_boot_time_to_wall_time() {
        let c = BootClock::with_boot_epoch_ns(1_700_000_000_000_000_000);
        let t = c.to_system_time(1_500_000);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.001500Z");
        assert_eq!(time_of_day(t), "22:13:20.001500");
    }
}
