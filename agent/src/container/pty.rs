//! Process terminals: a pty pair whose master the agent keeps (the
//! process's stdio is pumped through it) and whose slave is the process's
//! stdio and controlling terminal.
//!
//! An exec'd process gets a pty of its container's own devpts (the
//! container's `/dev/pts/ptmx`, reached through `/proc/<init>/root` with
//! every path component resolved inside that root), as runc makes a
//! console inside the container: its slave is `/dev/pts/N` there, so
//! ttyname(3) (`tty`, sudo, ssh, script) finds it. A pty of the agent's
//! devpts works as a terminal but has no name in the container (`tty`
//! says "not a tty"): it is what a container without a devpts of its own
//! gets, and what a container's init gets (its devpts is mounted only
//! after the pty is made).

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use super::in_root::open_in_root;

/// ptmx's device number (the same on every devpts instance).
const PTMX_MAJOR: u32 = 5;
const PTMX_MINOR: u32 = 2;

/// Opens a pty pair of the agent's devpts (`/dev/ptmx`): the master (for
/// the caller) and the slave, both close-on-exec; `size` is (rows, cols).
pub(super) fn open_pty(size: Option<(u16, u16)>) -> io::Result<(OwnedFd, OwnedFd)> {
    // SAFETY: open of a constant path; the result is checked.
    let m = unsafe {
        libc::open(
            c"/dev/ptmx".as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if m < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor nothing else owns.
    pty_of(unsafe { OwnedFd::from_raw_fd(m) }, size)
}

/// A pty pair for a process exec'd into the container whose init is
/// `init_pid`: of the container's devpts when it has one, else of the
/// agent's (see the module docs).
pub(super) fn open_pty_in(
    init_pid: libc::pid_t,
    size: Option<(u16, u16)>,
) -> io::Result<(OwnedFd, OwnedFd)> {
    match ptmx_in_root(Path::new(&format!("/proc/{init_pid}/root")))? {
        Some(ptmx) => pty_of(ptmx, size),
        None => open_pty(size),
    }
}

/// The pty whose master is the open ptmx `master`: unlocked, its slave
/// opened (TIOCGPTPEER: of the master's devpts instance, whatever the
/// caller's mounts), sized.
fn pty_of(master: OwnedFd, size: Option<(u16, u16)>) -> io::Result<(OwnedFd, OwnedFd)> {
    let m = master.as_raw_fd();
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads an int.
    if unsafe { libc::ioctl(m, libc::TIOCSPTLCK, &unlock) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: TIOCGPTPEER opens the slave and returns its descriptor.
    let s = unsafe {
        libc::ioctl(
            m,
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if s < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor nothing else owns.
    let slave = unsafe { OwnedFd::from_raw_fd(s) };
    if let Some((rows, cols)) = size {
        resize(&master, rows, cols)?;
    }
    Ok((master, slave))
}

/// TIOCSWINSZ on a pty master.
pub(super) fn resize(master: &OwnedFd, rows: u16, cols: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `dev/pts/ptmx` below `root` (a container's root), opened read-write
/// when it is a devpts ptmx; None when there is none. The path is resolved
/// inside `root` (its symlinks, absolute ones included, cannot leave it;
/// no magic links), and what it names is checked (a character device
/// 5:2 on a devpts file system) before it is opened for real, so a
/// container's stand-in (a FIFO, another device) is never opened.
fn ptmx_in_root(root: &Path) -> io::Result<Option<OwnedFd>> {
    let root = File::open(root)?;
    let path = match open_in_root(root.as_raw_fd(), c"dev/pts/ptmx", libc::O_PATH) {
        Ok(fd) => fd,
        Err(libc::ENOENT | libc::ENOTDIR | libc::ELOOP) => return Ok(None),
        Err(e) => return Err(io::Error::from_raw_os_error(e)),
    };
    if !is_devpts_ptmx(&path)? {
        return Ok(None);
    }
    // Reopen what was checked, read-write (the O_PATH descriptor's magic
    // link names exactly that file).
    let proc_path = format!("/proc/self/fd/{}\0", path.as_raw_fd());
    let c = CStr::from_bytes_with_nul(proc_path.as_bytes()).map_err(io::Error::other)?;
    // SAFETY: a NUL-terminated path; the result is checked.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor nothing else owns.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Whether `fd` is a ptmx (character device 5:2) on a devpts file system.
fn is_devpts_ptmx(fd: &OwnedFd) -> io::Result<bool> {
    // SAFETY: fstat fills a stat, plain data.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fd is open; st is a valid stat to fill.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFCHR
        || libc::major(st.st_rdev) != PTMX_MAJOR
        || libc::minor(st.st_rdev) != PTMX_MINOR
    {
        return Ok(false);
    }
    // SAFETY: statfs is plain data.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fd is open; fs is a valid statfs to fill.
    if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut fs) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fs.f_type == libc::DEVPTS_SUPER_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn temp_root(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("husk-pty-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn fd_path(fd: &OwnedFd) -> String {
        std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }

    /// Our own root's devpts: the slave is named there, and sized.
    #[test]
    fn a_pty_of_the_devpts_in_a_root() {
        if !Path::new("/dev/pts/ptmx").exists() {
            eprintln!("SKIP a_pty_of_the_devpts_in_a_root: no /dev/pts/ptmx");
            return;
        }
        let ptmx = ptmx_in_root(Path::new("/proc/self/root"))
            .unwrap()
            .expect("the devpts ptmx");
        let (master, slave) = pty_of(ptmx, Some((30, 100))).unwrap();
        assert!(
            fd_path(&slave).starts_with("/dev/pts/"),
            "{}",
            fd_path(&slave)
        );
        // SAFETY: winsize is plain data.
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: TIOCGWINSZ fills a winsize.
        let rc = unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
        assert_eq!(rc, 0);
        assert_eq!((ws.ws_row, ws.ws_col), (30, 100));
        drop(master);
    }

    /// A root without a devpts ptmx (none, a regular file in its place, a
    /// symlink out of the root) gives none: the caller falls back to the
    /// agent's.
    #[test]
    fn no_ptmx_or_a_stand_in_is_none() {
        let root = temp_root("none");
        assert!(ptmx_in_root(&root).unwrap().is_none());
        std::fs::create_dir_all(root.join("dev/pts")).unwrap();
        std::fs::write(root.join("dev/pts/ptmx"), "").unwrap();
        assert!(ptmx_in_root(&root).unwrap().is_none());
        // An absolute symlink resolves inside the root: not to the
        // agent's /dev (through a magic link or not).
        std::fs::remove_dir_all(root.join("dev")).unwrap();
        symlink("/proc/self/root/dev", root.join("dev")).unwrap();
        assert!(ptmx_in_root(&root).unwrap().is_none());
        std::fs::remove_file(root.join("dev")).unwrap();
        std::fs::create_dir_all(root.join("dev")).unwrap();
        symlink("/dev/pts", root.join("dev/pts")).unwrap();
        assert!(ptmx_in_root(&root).unwrap().is_none());
        std::fs::remove_dir_all(&root).unwrap();
        // The agent's own fallback still works.
        let (_m, s) = open_pty(None).unwrap();
        assert!(fd_path(&s).starts_with("/dev/pts/"));
    }
}
