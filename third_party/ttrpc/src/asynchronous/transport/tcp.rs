use std::convert::TryFrom;
use std::io::{Error as IoError, Result as IoResult};
use std::os::fd::{FromRawFd as _, RawFd};
use std::net::{
    SocketAddr, TcpListener as StdTcpListener, TcpStream as StdTcpStream,
};

use async_stream::stream;
use tokio::net::{TcpListener, TcpStream};

use super::{Listener, Socket};

impl Listener {
    /// Binds a TCP socket address without the `tcp://` scheme prefix.
    ///
    /// # Errors
    ///
    /// Returns an error if the address is invalid, already in use, or cannot be configured for
    /// asynchronous I/O.
    pub fn bind_tcp(addr: impl AsRef<str>) -> IoResult<Self> {
        let addr = parse_tcp_addr(addr)?;
        let listener = StdTcpListener::bind(addr)?;
        Self::try_from(listener)
    }

    /// Creates a listener from an existing TCP socket descriptor.
    ///
    /// # Safety
    ///
    /// `fd` must be a valid, open TCP listener. The caller must transfer exclusive ownership and
    /// must not close or use the descriptor afterward.
    ///
    /// # Errors
    ///
    /// Returns an error if the descriptor cannot be configured for asynchronous I/O.
    pub unsafe fn from_raw_tcp_listener_fd(fd: std::os::fd::RawFd) -> IoResult<Self> {
        let listener = unsafe { StdTcpListener::from_raw_fd(fd) };
        Self::try_from(listener)
    }
}

impl Socket {
    /// Connects to a TCP socket address without the `tcp://` scheme prefix.
    ///
    /// # Errors
    ///
    /// Returns an error if the address is invalid or the connection cannot be established.
    pub async fn connect_tcp(addr: impl AsRef<str>) -> IoResult<Self> {
        let addr = parse_tcp_addr(addr)?;
        let socket = StdTcpStream::connect(addr)?;
        Self::try_from(socket)
    }

    /// Creates a connected socket from an existing TCP socket descriptor.
    ///
    /// # Safety
    ///
    /// `fd` must be a valid, open, connected TCP socket. The caller must transfer exclusive
    /// ownership and must not close or use the descriptor afterward.
    ///
    /// # Errors
    ///
    /// Returns an error if the descriptor cannot be configured for asynchronous I/O.
    pub unsafe fn from_raw_tcp_socket_fd(fd: RawFd) -> IoResult<Self> {
        let socket = unsafe { StdTcpStream::from_raw_fd(fd) };
        Self::try_from(socket)
    }
}

impl From<TcpListener> for Listener {
    /// Convert a `TcpListener` into a `Listener`.
    ///
    /// Uses `Box::pin(stream! {...})` directly (bypassing `Listener::new()`)
    /// so each accepted connection goes through `Socket::from(socket)`,
    /// which captures the raw fd when the `security_extension` feature is enabled.
    fn from(listener: TcpListener) -> Self {
        Self(Box::pin(stream! {
            loop {
                match listener.accept().await {
                    Ok((socket, _)) => yield Ok(Socket::from(socket)),
                    Err(e) => yield Err(e),
                }
            }
        }))
    }
}

impl TryFrom<StdTcpListener> for Listener {
    type Error = IoError;
    fn try_from(listener: StdTcpListener) -> IoResult<Self> {
        listener.set_nonblocking(true)?;
        Ok(Self::from(TcpListener::from_std(listener)?))
    }
}

impl From<TcpStream> for Socket {
    fn from(socket: TcpStream) -> Self {
        Socket::from_fd_aware(socket)
    }
}

impl TryFrom<StdTcpStream> for Socket {
    type Error = IoError;
    fn try_from(socket: StdTcpStream) -> IoResult<Self> {
        socket.set_nonblocking(true)?;
        Ok(Self::from(TcpStream::from_std(socket)?))
    }
}

fn parse_tcp_addr(addr: impl AsRef<str>) -> IoResult<SocketAddr> {
    let addr = addr.as_ref();

    addr.parse::<SocketAddr>()
        .map_err(|e| io_other!("Failed to parse TCP address '{}': {}", addr, e))
}
