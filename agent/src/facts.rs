//! Facts about the guest that `GuestInfo` reports, behind [`GuestFacts`] so
//! the service can be tested with fakes. [`ProcFacts`] is the real source:
//! `/proc` files, `uname(2)` and the boot clock.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::OnceLock;

use thiserror::Error;

/// Why a file's contents could not be understood.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ParseError {
    #[error("no {0} line")]
    Missing(&'static str),
    #[error("{key}: bad value {value:?}")]
    BadValue { key: &'static str, value: String },
    #[error("empty")]
    Empty,
}

/// Why a fact could not be read.
#[derive(Debug, Error)]
pub enum FactsError {
    #[error("read {path}: {source}")]
    Read {
        path: &'static str,
        source: io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: &'static str,
        source: ParseError,
    },
    #[error("uname: {0}")]
    Uname(io::Error),
    #[error("clock_gettime({clock}): {source}")]
    Clock {
        clock: &'static str,
        source: io::Error,
    },
}

/// Memory figures from `/proc/meminfo`, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemInfo {
    pub total_kib: u64,
    pub available_kib: u64,
}

/// Where `GuestInfo` gets its facts.
pub trait GuestFacts: Send + Sync {
    /// The kernel release (`uname -r`).
    fn kernel_release(&self) -> Result<String, FactsError>;
    /// The host name (`uname -n`).
    fn hostname(&self) -> Result<String, FactsError>;
    /// This boot's random id.
    fn boot_id(&self) -> Result<String, FactsError>;
    /// Total and available memory.
    fn meminfo(&self) -> Result<MemInfo, FactsError>;
    /// Seconds since boot.
    fn uptime_seconds(&self) -> Result<f64, FactsError>;
}

const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";
const MEMINFO: &str = "/proc/meminfo";
const UPTIME: &str = "CLOCK_BOOTTIME";

/// The running system's facts: `/proc`, `uname(2)` and the boot clock.
///
/// Each `/proc` file costs its open, read and close, and the kernel's
/// formatting, all emulated on nested PVM hosts (~10 ms for a one-line
/// file, ~25 ms for `/proc/meminfo`). So what cannot change while the
/// kernel runs (the boot id, the kernel release) is read once per process,
/// `/proc/meminfo` stays open and is re-read from offset 0 (one `pread`,
/// which regenerates a seq_file), and the uptime is the boot clock (vDSO,
/// no system call), which is what `/proc/uptime` reports.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcFacts;

fn read(path: &'static str) -> Result<String, FactsError> {
    std::fs::read_to_string(path).map_err(|source| FactsError::Read { path, source })
}

static BOOT_ID_CACHE: OnceLock<String> = OnceLock::new();
static RELEASE_CACHE: OnceLock<String> = OnceLock::new();
static MEMINFO_FILE: OnceLock<File> = OnceLock::new();

/// `cell`'s value, made by `make` the first time it succeeds.
fn once<T: Clone>(
    cell: &OnceLock<T>,
    make: impl FnOnce() -> Result<T, FactsError>,
) -> Result<T, FactsError> {
    if let Some(v) = cell.get() {
        return Ok(v.clone());
    }
    let v = make()?;
    Ok(cell.get_or_init(|| v).clone())
}

/// The whole of `/proc/meminfo`, read with `pread` from offset 0 on a
/// descriptor kept open.
fn read_meminfo() -> Result<String, FactsError> {
    let err = |source| FactsError::Read {
        path: MEMINFO,
        source,
    };
    let file = match MEMINFO_FILE.get() {
        Some(f) => f,
        None => {
            let f = File::open(MEMINFO).map_err(err)?;
            MEMINFO_FILE.get_or_init(|| f)
        }
    };
    // One read takes it all (~1.5 KiB); more only if it has grown.
    let mut buf = vec![0u8; 8192];
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(len * 2, 0);
        }
        match file.read_at(&mut buf[len..], len as u64) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(err(e)),
        }
        if len < buf.len() {
            break;
        }
    }
    buf.truncate(len);
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

impl GuestFacts for ProcFacts {
    fn kernel_release(&self) -> Result<String, FactsError> {
        once(&RELEASE_CACHE, || uname().map(|u| c_chars(&u.release)))
    }

    fn hostname(&self) -> Result<String, FactsError> {
        uname().map(|u| c_chars(&u.nodename))
    }

    fn boot_id(&self) -> Result<String, FactsError> {
        once(&BOOT_ID_CACHE, || {
            let id = read(BOOT_ID)?.trim().to_owned();
            if id.is_empty() {
                return Err(FactsError::Parse {
                    path: BOOT_ID,
                    source: ParseError::Empty,
                });
            }
            Ok(id)
        })
    }

    fn meminfo(&self) -> Result<MemInfo, FactsError> {
        parse_meminfo(&read_meminfo()?).map_err(|source| FactsError::Parse {
            path: MEMINFO,
            source,
        })
    }

    fn uptime_seconds(&self) -> Result<f64, FactsError> {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec that outlives the call.
        if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } != 0 {
            return Err(FactsError::Clock {
                clock: UPTIME,
                source: io::Error::last_os_error(),
            });
        }
        Ok(ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9)
    }
}

fn uname() -> Result<libc::utsname, FactsError> {
    // SAFETY: utsname is plain data (arrays of c_char); all zeroes is valid.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable utsname that outlives the call.
    if unsafe { libc::uname(&mut u) } != 0 {
        return Err(FactsError::Uname(io::Error::last_os_error()));
    }
    Ok(u)
}

/// A NUL-terminated `c_char` field as a string (lossy UTF-8).
fn c_chars(field: &[libc::c_char]) -> String {
    let bytes: Vec<u8> = field
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// `MemTotal` and `MemAvailable` from `/proc/meminfo` text.
pub fn parse_meminfo(text: &str) -> Result<MemInfo, ParseError> {
    let mut total = None;
    let mut available = None;
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let (key, slot) = match key.trim() {
            "MemTotal" => ("MemTotal", &mut total),
            "MemAvailable" => ("MemAvailable", &mut available),
            _ => continue,
        };
        *slot = Some(parse_kib(key, rest)?);
    }
    Ok(MemInfo {
        total_kib: total.ok_or(ParseError::Missing("MemTotal"))?,
        available_kib: available.ok_or(ParseError::Missing("MemAvailable"))?,
    })
}

/// `"   131072 kB"` → 131072.
fn parse_kib(key: &'static str, rest: &str) -> Result<u64, ParseError> {
    let bad = || ParseError::BadValue {
        key,
        value: rest.trim().to_owned(),
    };
    let mut words = rest.split_whitespace();
    let n = words.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
    match (words.next(), words.next()) {
        (None | Some("kB"), None) => Ok(n),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMINFO_TEXT: &str = "MemTotal:         118840 kB\n\
        MemFree:          101236 kB\n\
        MemAvailable:      99828 kB\n\
        Buffers:               0 kB\n\
        HugePages_Total:       0\n";

    #[test]
    fn meminfo_total_and_available() {
        assert_eq!(
            parse_meminfo(MEMINFO_TEXT),
            Ok(MemInfo {
                total_kib: 118_840,
                available_kib: 99_828
            })
        );
    }

    #[test]
    fn meminfo_missing_or_malformed() {
        assert_eq!(
            parse_meminfo("MemTotal: 1 kB\n"),
            Err(ParseError::Missing("MemAvailable"))
        );
        assert_eq!(parse_meminfo(""), Err(ParseError::Missing("MemTotal")));
        assert_eq!(
            parse_meminfo("MemTotal: lots kB\nMemAvailable: 1 kB\n"),
            Err(ParseError::BadValue {
                key: "MemTotal",
                value: "lots kB".into()
            })
        );
        assert!(parse_meminfo("MemTotal: 1 MB\nMemAvailable: 1 kB\n").is_err());
        assert!(parse_meminfo("MemTotal: -1 kB\nMemAvailable: 1 kB\n").is_err());
        assert!(parse_meminfo("MemTotal:\nMemAvailable: 1 kB\n").is_err());
        // Lines without a colon and unknown keys are skipped.
        assert_eq!(
            parse_meminfo("garbage\nX: y\nMemAvailable: 2\nMemTotal: 3 kB"),
            Ok(MemInfo {
                total_kib: 3,
                available_kib: 2
            })
        );
    }

    /// Seconds since boot: the first field of `/proc/uptime` text.
    fn parse_uptime(text: &str) -> Result<f64, ParseError> {
        let first = text.split_whitespace().next().ok_or(ParseError::Empty)?;
        match first.parse::<f64>() {
            Ok(s) if s.is_finite() && s >= 0.0 => Ok(s),
            _ => Err(ParseError::BadValue {
                key: "uptime",
                value: first.to_owned(),
            }),
        }
    }

    #[test]
    fn uptime_first_field() {
        assert_eq!(parse_uptime("12.34 5.67\n"), Ok(12.34));
        assert_eq!(parse_uptime("0.00 0.00"), Ok(0.0));
        assert_eq!(parse_uptime(""), Err(ParseError::Empty));
        assert!(parse_uptime("-1 0").is_err());
        assert!(parse_uptime("inf 0").is_err());
        assert!(parse_uptime("NaN 0").is_err());
        assert!(parse_uptime("soon").is_err());
    }

    #[test]
    fn this_host_has_facts() {
        let f = ProcFacts;
        assert!(!f.kernel_release().expect("uname").is_empty());
        let m = f.meminfo().expect("meminfo");
        assert!(m.total_kib >= m.available_kib && m.total_kib > 0);
        // /proc/uptime is the boot clock cut to hundredths.
        let proc_uptime = || parse_uptime(&read("/proc/uptime").expect("read")).expect("parse");
        let before = proc_uptime();
        let up = f.uptime_seconds().expect("uptime");
        let after = proc_uptime();
        assert!(before <= up && up <= after + 0.01, "{before} {up} {after}");
        // Read again through the descriptor kept open.
        let m2 = f.meminfo().expect("meminfo again");
        assert_eq!(m2.total_kib, m.total_kib);
        assert_eq!(f.boot_id().expect("cached"), f.boot_id().expect("cached"));
        assert_eq!(f.boot_id().expect("boot id").len(), 36);
        f.hostname().expect("hostname");
    }
}
