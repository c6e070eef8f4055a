//! A vsock echo service for tests and benchmarks, enabled only when the
//! kernel command line has `husk.echo_port=PORT`: every byte a host stream
//! sends comes back unchanged. The host checks stream integrity and measures
//! throughput and latency with it.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

/// Copies everything read from `s` back to it until EOF.
pub fn echo<S: Read + Write>(mut s: S) -> io::Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        s.write_all(&buf[..n])?;
        total += n as u64;
    }
}

fn listen(port: u32) -> io::Result<OwnedFd> {
    crate::vsock::listen(libc::VMADDR_CID_ANY, port, 64, false)
}

/// Listens on vsock `port` and echoes every connection on its own thread.
pub fn spawn(port: u32) -> io::Result<()> {
    let listener = listen(port)?;
    std::thread::Builder::new()
        .name("echo".into())
        .spawn(move || loop {
            // SAFETY: accept on our listening socket; null address pointers
            // are allowed.
            let raw = unsafe {
                libc::accept4(
                    listener.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC,
                )
            };
            if raw < 0 {
                continue;
            }
            // SAFETY: accept4 returned a fresh descriptor that we own. A
            // connected vsock stream behaves like any stream socket, which
            // UnixStream wraps without caring about the family.
            let stream = unsafe { UnixStream::from_raw_fd(raw) };
            let _ = std::thread::Builder::new()
                .name("echo-conn".into())
                .spawn(move || echo(stream));
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoes_until_eof() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || echo(b).unwrap());
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
        let writer = {
            let mut w = a.try_clone().unwrap();
            let d = data.clone();
            std::thread::spawn(move || {
                w.write_all(&d).unwrap();
                w.shutdown(std::net::Shutdown::Write).unwrap();
            })
        };
        let mut back = Vec::new();
        a.read_to_end(&mut back).unwrap();
        writer.join().unwrap();
        assert_eq!(t.join().unwrap(), data.len() as u64);
        assert_eq!(back, data);
    }
}
