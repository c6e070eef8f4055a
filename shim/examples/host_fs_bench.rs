//! What the pod VM's host-private tree costs on the host, per pod start
//! and per container, against the path-based layout it replaced (one
//! shared directory, binds by path, a read-only remount after the bind,
//! `remove_dir_all`), measured in the same run. Runs in a mount namespace
//! of its own (root needed); nothing reaches the host's mounts.
//!
//! `cargo run --release -p husk-shim --example host_fs_bench -- [N]`
//! prints a Markdown table (medians of N rounds, default 200).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use husk_shim::shim_v2::host_fs::PodTree;
use husk_shim::shim_v2::spec::Volume;

fn sys_mount(src: &Path, dst: &Path, flags: libc::c_ulong) {
    let s = CString::new(src.to_str().unwrap()).unwrap();
    let d = CString::new(dst.to_str().unwrap()).unwrap();
    // SAFETY: valid NUL-terminated strings; no data.
    let r = unsafe {
        libc::mount(
            s.as_ptr(),
            d.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    };
    assert_eq!(
        r,
        0,
        "mount {}: {}",
        dst.display(),
        std::io::Error::last_os_error()
    );
}

fn umount(p: &Path) {
    let c = CString::new(p.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
}

/// The layout before: `<pod>/shared/<cid>/{rootfs,mounts/<i>}` by path.
fn old_layout(pod: &Path, rootfs: &Path, vols: &[Volume]) -> (Duration, Duration, Duration) {
    let t0 = Instant::now();
    let shared = pod.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let t_pod = t0.elapsed();
    let t1 = Instant::now();
    let c = shared.join("c1");
    std::fs::create_dir_all(c.join("rootfs")).unwrap();
    sys_mount(rootfs, &c.join("rootfs"), libc::MS_BIND | libc::MS_REC);
    std::fs::create_dir_all(c.join("mounts")).unwrap();
    for v in vols {
        let t = c.join("mounts").join(v.index.to_string());
        if v.source.is_dir() {
            std::fs::create_dir(&t).unwrap();
        } else {
            std::fs::File::create(&t).unwrap();
        }
        let rec = if v.recursive { libc::MS_REC } else { 0 };
        sys_mount(&v.source, &t, libc::MS_BIND | rec);
        if v.read_only {
            sys_mount(
                Path::new(""),
                &t,
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
            );
        }
    }
    let t_attach = t1.elapsed();
    let t2 = Instant::now();
    for v in vols.iter().rev() {
        let t = c.join("mounts").join(v.index.to_string());
        umount(&t);
        let _ = std::fs::remove_file(&t).or_else(|_| std::fs::remove_dir(&t));
    }
    umount(&c.join("rootfs"));
    std::fs::remove_dir_all(pod).unwrap();
    (t_pod, t_attach, t2.elapsed())
}

/// The layout now: a PodTree (its binds), one container, its release.
fn new_layout(pod: &Path, rootfs: &Path, vols: &[Volume]) -> (Duration, Duration, Duration) {
    let t0 = Instant::now();
    let tree = PodTree::create("bench", pod).unwrap();
    let t_pod = t0.elapsed();
    let t1 = Instant::now();
    tree.attach_rootfs("c1", &[], rootfs).unwrap();
    tree.attach_volumes("c1", vols).unwrap();
    let t_attach = t1.elapsed();
    let t2 = Instant::now();
    tree.detach("c1").unwrap();
    tree.release();
    assert!(!pod.exists());
    (t_pod, t_attach, t2.elapsed())
}

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e6
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    // SAFETY: single-threaded here; unshare and mount with valid arguments.
    unsafe {
        assert_eq!(libc::unshare(libc::CLONE_NEWNS), 0, "unshare (root needed)");
        let r = libc::mount(
            c"none".as_ptr(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        );
        assert_eq!(r, 0);
    }
    let dir = std::env::temp_dir().join(format!("husk-hostfs-bench-{}", std::process::id()));
    let src = dir.join("src");
    let rootfs = src.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::create_dir_all(src.join("ro")).unwrap();
    std::fs::create_dir_all(src.join("rw")).unwrap();
    std::fs::write(src.join("file"), "x").unwrap();
    let vol = |index, source: PathBuf, recursive, read_only| Volume {
        what: format!("mounts[{index}]"),
        index,
        source,
        recursive,
        read_only,
    };
    let vols = [
        vol(10, src.join("ro"), true, true),
        vol(11, src.join("file"), true, true),
        vol(12, src.join("rw"), true, false),
    ];
    let mut rows: Vec<(&str, [Vec<Duration>; 3])> = vec![
        ("before: one shared dir, by path", Default::default()),
        (
            "now: host-private tree + read-only share, by fd",
            Default::default(),
        ),
    ];
    for i in 0..n {
        let pod = dir.join(format!("pods-{i}"));
        for (k, f) in [old_layout as fn(&Path, &Path, &[Volume]) -> _, new_layout]
            .iter()
            .enumerate()
        {
            let (a, b, c) = f(&pod, &rootfs, &vols);
            rows[k].1[0].push(a);
            rows[k].1[1].push(b);
            rows[k].1[2].push(c);
        }
    }
    println!("| layout ({n} rounds, medians) | pod VM dir made (µs) | rootfs + 3 volumes attached (µs) | detached + removed (µs) |");
    println!("|---|---|---|---|");
    for (name, [a, b, c]) in rows {
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} |",
            median(a),
            median(b),
            median(c)
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
