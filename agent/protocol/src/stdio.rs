//! The header that opens a container's stdio stream on
//! [`STDIO_VSOCK_PORT`](crate::STDIO_VSOCK_PORT), written by the host and
//! parsed by the agent: `<container_id> <exec_id> <stream>\n`, exec id
//! [`INIT_EXEC_ID`](crate::INIT_EXEC_ID) for the container's own process.

use std::fmt;

/// The most bytes a header may take, its newline included.
pub const HEADER_MAX: usize = 200;
/// The most bytes of a container or exec id.
pub const ID_MAX: usize = 64;

/// Which of a process's streams a connection carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StreamKind {
    Stdin,
    Stdout,
    Stderr,
    /// A pseudo-terminal, both ways.
    Tty,
}

impl StreamKind {
    pub const ALL: [StreamKind; 4] = [Self::Stdin, Self::Stdout, Self::Stderr, Self::Tty];

    /// The name in a header.
    pub fn name(self) -> &'static str {
        match self {
            Self::Stdin => "stdin",
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
            Self::Tty => "tty",
        }
    }

    /// The stream a header names.
    pub fn from_name(s: &[u8]) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name().as_bytes() == s)
    }
}

impl fmt::Display for StreamKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether every byte of a container or exec id is in `[A-Za-z0-9_.-]`
/// (its length is checked apart: 1..=[`ID_MAX`]).
pub fn id_chars_ok(id: &[u8]) -> bool {
    id.iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Whether `id` is a valid container or exec id: 1..=[`ID_MAX`] of
/// `[A-Za-z0-9_.-]`.
pub fn is_valid_id(id: &[u8]) -> bool {
    (1..=ID_MAX).contains(&id.len()) && id_chars_ok(id)
}

/// The header line for a stream (ids not checked here).
pub fn header_line(container_id: &str, exec_id: &str, stream: StreamKind) -> String {
    format!("{container_id} {exec_id} {stream}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_ids() {
        for k in StreamKind::ALL {
            assert_eq!(StreamKind::from_name(k.name().as_bytes()), Some(k));
        }
        assert_eq!(StreamKind::from_name(b"STDOUT"), None);
        assert!(is_valid_id(b"a.b-c_9"));
        assert!(!is_valid_id(b""));
        assert!(!is_valid_id(&[b'a'; 65]));
        assert!(!is_valid_id(b"a b"));
        assert_eq!(header_line("c", "-", StreamKind::Tty), "c - tty\n");
    }
}
