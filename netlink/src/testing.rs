//! Test helpers for this crate's users (the `testing` feature): what the
//! kernel shows of an address that netlink's dumps here do not carry.

/// The `IFA_F_*` flags of IPv6 address `addr` in this thread's namespace
/// (`/proc/thread-self/net/if_inet6`: address, index, prefix, scope,
/// flags, name); `None` where the address is not there.
pub fn inet6_flags(addr: &std::net::Ipv6Addr) -> Option<u32> {
    let hex: String = addr.octets().iter().map(|b| format!("{b:02x}")).collect();
    std::fs::read_to_string("/proc/thread-self/net/if_inet6")
        .ok()?
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.first() == Some(&hex.as_str()))
        .and_then(|f| u32::from_str_radix(f.get(4)?, 16).ok())
}
