//! The server log, in Valkey's line format (`pid:M 25 Nov 2026 14:20:00.123 * message`), to
//! standard output or to `logfile`.

use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::config::LogLevel;

/// The role letter of log lines: `S` while this server is a replica, `M` otherwise.
static REPLICA: AtomicBool = AtomicBool::new(false);

/// Marks the log lines from now on with this server's role.
pub fn set_replica_role(replica: bool) {
    REPLICA.store(replica, Ordering::Relaxed);
}

struct Logger {
    file: Option<Mutex<File>>,
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        // Valkey's level marks: debug '.', verbose '-', notice '*', warning '#'.
        let mark = match record.level() {
            Level::Error | Level::Warn => '#',
            Level::Info => '*',
            Level::Debug => '-',
            Level::Trace => '.',
        };
        let line = format!(
            "{}:{} {} {} {}\n",
            std::process::id(),
            if REPLICA.load(Ordering::Relaxed) {
                'S'
            } else {
                'M'
            },
            timestamp(),
            mark,
            record.args()
        );
        match &self.file {
            Some(file) => {
                if let Ok(mut f) = file.lock() {
                    let _ = f.write_all(line.as_bytes());
                }
            }
            None => {
                let _ = std::io::stdout().lock().write_all(line.as_bytes());
            }
        }
    }

    fn flush(&self) {
        match &self.file {
            Some(file) => {
                if let Ok(mut f) = file.lock() {
                    let _ = f.flush();
                }
            }
            None => {
                let _ = std::io::stdout().flush();
            }
        }
    }
}

/// Installs the logger. `logfile` empty means standard output.
pub fn init(logfile: &str, level: LogLevel) -> std::io::Result<()> {
    let file = if logfile.is_empty() {
        None
    } else {
        Some(Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(logfile)?,
        ))
    };
    // A second init (tests start servers in-process only through the binary) is harmless.
    let _ = log::set_boxed_logger(Box::new(Logger { file }));
    apply_level(level);
    Ok(())
}

/// Applies `loglevel` (also after CONFIG SET).
pub fn apply_level(level: LogLevel) {
    log::set_max_level(match level {
        LogLevel::Debug => LevelFilter::Trace,
        LogLevel::Verbose => LevelFilter::Debug,
        LogLevel::Notice => LevelFilter::Info,
        LogLevel::Warning => LevelFilter::Warn,
        LogLevel::Nothing => LevelFilter::Off,
    });
}

/// `25 Nov 2026 14:20:00.123` (UTC).
fn timestamp() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let (year, month, day) = civil_from_days(days);
    let rem = secs % 86_400;
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{:02} {} {} {:02}:{:02}:{:02}.{:03}",
        day,
        MONTHS[usize::try_from(month - 1).unwrap_or(0)],
        year,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        now.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_782), (2026, 11, 25));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
