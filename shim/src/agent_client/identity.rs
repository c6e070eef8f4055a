//! What the host gives a guest restored from a template snapshot so it stops
//! being a copy of the template: [`Identity`] (sent by
//! [`AgentClient::reidentify`](super::AgentClient::reidentify)) and what the
//! agent answers, [`ReidentifyOutcome`].

use std::fmt;
use std::io;
use std::time::{SystemTime, UNIX_EPOCH};

use husk_agent_protocol::agent::{ReidentifyRequest, ReidentifyResponse};

/// Seed bytes [`Identity::fresh`] draws (the agent takes 32 to 512).
pub const FRESH_SEED_LEN: usize = 64;

/// A guest's new identity. The agent checks it: `rng_seed` 32 to 512 bytes,
/// `hostname` 1 to 64 characters of `[a-zA-Z0-9-.]` not starting with `-`,
/// `instance_id` 1 to 64 printable ASCII characters without spaces,
/// `time_unix_ns` after the epoch.
#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    /// Mixed into the guest kernel's entropy pool, which is then reseeded.
    pub rng_seed: Vec<u8>,
    pub hostname: String,
    /// The guest's new identity (e.g. a UUID).
    pub instance_id: String,
    /// The host's wall clock, ns since the Unix epoch.
    pub time_unix_ns: i64,
}

/// What `Reidentify` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReidentifyOutcome {
    /// The guest kernel's boot_id (the template's: unchanged).
    pub boot_id: String,
    /// The identity now in effect.
    pub instance_id: String,
    /// How far the guest's wall clock was stepped (new - old), in ns.
    pub clock_step_ns: i64,
}

impl Identity {
    /// A new identity named `hostname`: a [`FRESH_SEED_LEN`]-byte seed and a
    /// random UUID v4 instance id, both from getrandom(2), and the current
    /// wall clock.
    pub fn fresh(hostname: impl Into<String>) -> io::Result<Identity> {
        let mut rng_seed = vec![0u8; FRESH_SEED_LEN];
        getrandom(&mut rng_seed)?;
        let mut uuid = [0u8; 16];
        getrandom(&mut uuid)?;
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(io::Error::other)?;
        let time_unix_ns = i64::try_from(since_epoch.as_nanos())
            .map_err(|_| io::Error::other("the wall clock is past year 2262"))?;
        Ok(Identity {
            rng_seed,
            hostname: hostname.into(),
            instance_id: uuid_v4(uuid),
            time_unix_ns,
        })
    }

    pub(super) fn to_request(&self) -> ReidentifyRequest {
        ReidentifyRequest {
            rng_seed: self.rng_seed.clone(),
            hostname: self.hostname.clone(),
            instance_id: self.instance_id.clone(),
            time_unix_ns: self.time_unix_ns,
            ..Default::default()
        }
    }
}

/// Leaves the seed out: it is key material.
impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("rng_seed", &format_args!("<{} bytes>", self.rng_seed.len()))
            .field("hostname", &self.hostname)
            .field("instance_id", &self.instance_id)
            .field("time_unix_ns", &self.time_unix_ns)
            .finish()
    }
}

impl From<ReidentifyResponse> for ReidentifyOutcome {
    fn from(r: ReidentifyResponse) -> Self {
        Self {
            boot_id: r.boot_id,
            instance_id: r.instance_id,
            clock_step_ns: r.clock_step_ns,
        }
    }
}

/// Fills `buf` from getrandom(2) (the kernel CRNG; blocks only until it is
/// first seeded).
/// Whether the agent takes `name` as a hostname: 1 to 64 characters of
/// `[a-zA-Z0-9-.]`, not starting with `-` (the agent's own check).
pub(crate) fn is_valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

fn getrandom(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: the pointer and length describe `rest`, writable and alive
        // for the call.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        // n >= 0 and at most rest.len().
        filled += n.unsigned_abs();
    }
    Ok(())
}

/// `bytes` as a UUID version 4 (random, RFC 9562 variant), lowercase
/// `xxxxxxxx-xxxx-4xxx-Nxxx-xxxxxxxxxxxx` with N one of 8, 9, a, b.
pub fn uuid_v4(mut bytes: [u8; 16]) -> String {
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let mut s = String::with_capacity(36);
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push_str(&format!("{b:02x}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_as_the_agent_checks_them() {
        let long = "h".repeat(64);
        let too_long = "h".repeat(65);
        for name in [
            "a", "pod-1", "x.y", &long, "", "(none)", "-a", "a_b", &too_long, "é", "a b",
        ] {
            assert_eq!(
                is_valid_hostname(name),
                husk_agent::identity::validate_hostname(name).is_ok(),
                "{name:?}"
            );
        }
    }

    #[test]
    fn uuid_v4_format() {
        assert_eq!(uuid_v4([0; 16]), "00000000-0000-4000-8000-000000000000");
        assert_eq!(uuid_v4([0xff; 16]), "ffffffff-ffff-4fff-bfff-ffffffffffff");
        let seq: [u8; 16] = std::array::from_fn(|i| i as u8 * 17);
        assert_eq!(uuid_v4(seq), "00112233-4455-4677-8899-aabbccddeeff");
    }

    #[test]
    fn debug_leaves_the_seed_out() {
        let id = Identity {
            rng_seed: vec![0xab; 64],
            hostname: "h".into(),
            instance_id: "i".into(),
            time_unix_ns: 5,
        };
        let d = format!("{id:?}");
        assert!(d.contains("<64 bytes>") && !d.contains("171"), "{d}");
    }
}
