//! A new identity for a guest restored from a template snapshot: what
//! `Reidentify` checks ([`NewIdentity::validate`]) and what it changes, behind
//! [`GuestControl`] so the service can be tested with fakes. [`ProcFacts`]
//! is the real implementation: `/dev/urandom` ioctls, `sethostname(2)` and
//! `clock_settime(2)`.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::OnceLock;

use thiserror::Error;

use crate::facts::ProcFacts;

/// Seed sizes `Reidentify` accepts, in bytes.
pub const SEED_LEN: std::ops::RangeInclusive<usize> = 32..=512;
/// The longest hostname accepted (the kernel's `__NEW_UTS_LEN`).
pub const HOSTNAME_MAX: usize = 64;
/// The longest instance id accepted.
pub const INSTANCE_ID_MAX: usize = 64;

/// Why a `Reidentify` request was refused: the field and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{field}: {reason}")]
pub struct InvalidField {
    pub field: &'static str,
    pub reason: String,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> InvalidField {
    InvalidField {
        field,
        reason: reason.into(),
    }
}

/// A checked `Reidentify` request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewIdentity<'a> {
    pub rng_seed: &'a [u8],
    pub hostname: &'a str,
    pub instance_id: &'a str,
    pub time_unix_ns: i64,
}

impl<'a> NewIdentity<'a> {
    /// Checks every field; the first bad one is the error.
    pub fn validate(
        rng_seed: &'a [u8],
        hostname: &'a str,
        instance_id: &'a str,
        time_unix_ns: i64,
    ) -> Result<Self, InvalidField> {
        if !SEED_LEN.contains(&rng_seed.len()) {
            return Err(invalid(
                "rng_seed",
                format!(
                    "{} bytes, want {} to {}",
                    rng_seed.len(),
                    SEED_LEN.start(),
                    SEED_LEN.end()
                ),
            ));
        }
        validate_hostname(hostname)?;
        validate_instance_id(instance_id)?;
        if time_unix_ns <= 0 {
            return Err(invalid(
                "time_unix_ns",
                format!("{time_unix_ns} is not after the Unix epoch"),
            ));
        }
        Ok(Self {
            rng_seed,
            hostname,
            instance_id,
            time_unix_ns,
        })
    }
}

/// 1 to [`HOSTNAME_MAX`] characters of `[a-zA-Z0-9-.]`, not starting with
/// `-`.
pub fn validate_hostname(name: &str) -> Result<(), InvalidField> {
    const FIELD: &str = "hostname";
    if name.is_empty() {
        return Err(invalid(FIELD, "empty"));
    }
    if name.len() > HOSTNAME_MAX {
        return Err(invalid(
            FIELD,
            format!("{} bytes, at most {HOSTNAME_MAX}", name.len()),
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '.'))
    {
        return Err(invalid(
            FIELD,
            format!("{c:?} is not a letter, digit, '-' or '.'"),
        ));
    }
    if name.starts_with('-') {
        return Err(invalid(FIELD, "starts with '-'"));
    }
    Ok(())
}

/// 1 to [`INSTANCE_ID_MAX`] printable ASCII characters, space excluded (it
/// goes into log lines and file names).
pub fn validate_instance_id(id: &str) -> Result<(), InvalidField> {
    const FIELD: &str = "instance_id";
    if id.is_empty() {
        return Err(invalid(FIELD, "empty"));
    }
    if id.len() > INSTANCE_ID_MAX {
        return Err(invalid(
            FIELD,
            format!("{} bytes, at most {INSTANCE_ID_MAX}", id.len()),
        ));
    }
    if let Some(c) = id.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(invalid(
            FIELD,
            format!("{c:?} is not printable ASCII (space excluded)"),
        ));
    }
    Ok(())
}

/// What `Reidentify` changes in the guest.
pub trait GuestControl: Send + Sync {
    /// Mixes `seed` into the kernel's entropy pool, credited, and reseeds
    /// the CRNG from it.
    fn reseed_rng(&self, seed: &[u8]) -> io::Result<()>;
    /// Sets the kernel's host name (`uname -n`).
    fn set_hostname(&self, name: &str) -> io::Result<()>;
    /// Steps `CLOCK_REALTIME` to `unix_ns`; returns the step (new - old) in
    /// ns.
    fn set_realtime(&self, unix_ns: i64) -> io::Result<i64>;
}

/// `RNDADDENTROPY = _IOW('R', 0x03, int[2])` (linux/random.h): adds the
/// bytes of a `struct rand_pool_info { int entropy_count; int buf_size;
/// __u32 buf[]; }` to the input pool, crediting `entropy_count` bits.
/// Needs CAP_SYS_ADMIN.
pub const RNDADDENTROPY: u32 = 0x4008_5203;
/// `RNDRESEEDCRNG = _IO('R', 0x07)` (linux/random.h, since 4.17): reseeds
/// the CRNG from the input pool now. Needs CAP_SYS_ADMIN.
pub const RNDRESEEDCRNG: u32 = 0x5207;

/// The `struct rand_pool_info` for `seed`, as 32-bit words (so it is
/// aligned): `[entropy_count, buf_size, seed bytes padded to a word...]`.
pub fn rand_pool_info(seed: &[u8]) -> io::Result<Vec<u32>> {
    let too_long = || io::Error::new(io::ErrorKind::InvalidInput, "seed too long");
    let bytes = i32::try_from(seed.len()).map_err(|_| too_long())?;
    let bits = bytes.checked_mul(8).ok_or_else(too_long)?;
    let mut words = Vec::with_capacity(2 + seed.len().div_ceil(4));
    // The kernel reads both as `int`: the same bits in a u32.
    words.push(u32::from_ne_bytes(bits.to_ne_bytes()));
    words.push(u32::from_ne_bytes(bytes.to_ne_bytes()));
    words.extend(seed.chunks(4).map(|c| {
        let mut w = [0u8; 4];
        w[..c.len()].copy_from_slice(c);
        u32::from_ne_bytes(w)
    }));
    Ok(words)
}

/// `ioctl(fd, request, arg)`, with the error as an `io::Error`.
fn ioctl(fd: &File, request: u32, arg: *const libc::c_void) -> io::Result<()> {
    // SAFETY: `fd` is an open descriptor for the call's duration; callers
    // pass a request whose argument `arg` points to (or ignores), alive and
    // as large as the request reads.
    if unsafe { libc::ioctl(fd.as_raw_fd(), request as _, arg) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn realtime_ns() -> io::Result<i64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec that outlives the call.
    if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // time_t and c_long are i64 on x86_64, not everywhere.
    #[allow(clippy::useless_conversion)]
    Ok(i64::from(ts.tv_sec)
        .saturating_mul(1_000_000_000)
        .saturating_add(i64::from(ts.tv_nsec)))
}

/// `/dev/urandom`, opened once: on the restore path every syscall and path
/// walk counts (each open+close is several emulated ms on nested PVM hosts).
fn urandom() -> io::Result<&'static File> {
    static URANDOM: OnceLock<File> = OnceLock::new();
    if let Some(f) = URANDOM.get() {
        return Ok(f);
    }
    let f = File::open("/dev/urandom")?;
    Ok(URANDOM.get_or_init(|| f))
}

/// The running system: changes the real kernel state (run only in the guest).
impl GuestControl for ProcFacts {
    fn reseed_rng(&self, seed: &[u8]) -> io::Result<()> {
        let info = rand_pool_info(seed)?;
        let urandom = urandom()?;
        ioctl(urandom, RNDADDENTROPY, info.as_ptr().cast())?;
        ioctl(urandom, RNDRESEEDCRNG, std::ptr::null())
    }

    fn set_hostname(&self, name: &str) -> io::Result<()> {
        // SAFETY: the pointer and length describe `name`'s bytes, which the
        // kernel only reads during the call (no NUL terminator needed).
        if unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn set_realtime(&self, unix_ns: i64) -> io::Result<i64> {
        let before = realtime_ns()?;
        let ts = libc::timespec {
            tv_sec: unix_ns.div_euclid(1_000_000_000) as libc::time_t,
            tv_nsec: unix_ns.rem_euclid(1_000_000_000) as libc::c_long,
        };
        // SAFETY: `ts` is a valid timespec the kernel only reads.
        if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(unix_ns.saturating_sub(before))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use super::*;

    /// `_IOC(dir, type, nr, size)` from asm-generic/ioctl.h.
    const fn ioc(dir: u32, ty: u8, nr: u32, size: u32) -> u32 {
        (dir << 30) | (size << 16) | ((ty as u32) << 8) | nr
    }

    #[test]
    fn ioctl_numbers_match_linux_random_h() {
        const IOC_NONE: u32 = 0;
        const IOC_WRITE: u32 = 1;
        let int2 = (2 * std::mem::size_of::<libc::c_int>()) as u32;
        assert_eq!(RNDADDENTROPY, ioc(IOC_WRITE, b'R', 0x03, int2));
        assert_eq!(RNDRESEEDCRNG, ioc(IOC_NONE, b'R', 0x07, 0));
    }

    #[test]
    fn rand_pool_info_layout() {
        let seed: Vec<u8> = (1..=6).collect();
        let w = rand_pool_info(&seed).unwrap();
        assert_eq!(w.len(), 2 + 2);
        assert_eq!(w[0], 48, "entropy_count: 8 bits per byte");
        assert_eq!(w[1], 6, "buf_size in bytes");
        let bytes: Vec<u8> = w[2..].iter().flat_map(|x| x.to_ne_bytes()).collect();
        assert_eq!(bytes, [1, 2, 3, 4, 5, 6, 0, 0]);
    }

    #[test]
    fn hostnames() {
        for ok in ["a", "pod-1", "Web.example.com", "0", &"x".repeat(64)] {
            assert_eq!(validate_hostname(ok), Ok(()), "{ok}");
        }
        let reason = |name: &str| validate_hostname(name).map_err(|e| e.to_string());
        assert_eq!(reason(""), Err("hostname: empty".into()));
        assert_eq!(
            reason(&"x".repeat(65)),
            Err("hostname: 65 bytes, at most 64".into())
        );
        assert_eq!(reason("-x"), Err("hostname: starts with '-'".into()));
        assert_eq!(
            reason("a b"),
            Err("hostname: ' ' is not a letter, digit, '-' or '.'".into())
        );
        for bad in ["a_b", "a/b", "ä", "a\0", "a\n", "pod:1"] {
            assert!(validate_hostname(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn instance_ids() {
        for ok in ["x", "4f1c2b7e-0d3a-4e5f-9a6b-7c8d9e0f1a2b", &"~".repeat(64)] {
            assert_eq!(validate_instance_id(ok), Ok(()), "{ok}");
        }
        for bad in ["", "a b", "a\tb", "é", &"x".repeat(65)] {
            let e = validate_instance_id(bad).unwrap_err();
            assert_eq!(e.field, "instance_id", "{bad:?}");
        }
    }

    #[test]
    fn requests_name_their_first_bad_field() {
        let seed = [7u8; 32];
        let field = |seed: &[u8], host, id, t| {
            NewIdentity::validate(seed, host, id, t)
                .err()
                .map(|e| e.field)
        };
        assert_eq!(field(&seed, "h", "i", 1), None);
        assert_eq!(field(&[7; 512], "h", "i", 1), None);
        assert_eq!(field(&[7; 31], "h", "i", 1), Some("rng_seed"));
        assert_eq!(field(&[7; 513], "h", "i", 1), Some("rng_seed"));
        assert_eq!(field(&seed, "", "i", 1), Some("hostname"));
        assert_eq!(field(&seed, "h", "", 1), Some("instance_id"));
        assert_eq!(field(&seed, "h", "i", 0), Some("time_unix_ns"));
        assert_eq!(field(&seed, "h", "i", -1), Some("time_unix_ns"));
    }

    #[test]
    fn realtime_reads_the_clock() {
        // Reads only: nothing here changes the host's clock, name or RNG.
        let now = realtime_ns().unwrap();
        assert!(now > 1_600_000_000_000_000_000, "{now}");
    }
}
