//! The `--disk` and `--share` arguments of `husk vm run` and
//! `husk template create`.

use std::path::PathBuf;

use husk_vmm::{DiskConfig, ShareConfig};

/// `--disk PATH[,ro][,id=ID]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskArg {
    pub path: PathBuf,
    pub read_only: bool,
    /// `None`: `disk<N>` by position.
    pub id: Option<String>,
}

impl DiskArg {
    /// The VMM's disk config; `index` names a disk that has no id.
    pub fn config(&self, index: usize) -> DiskConfig {
        DiskConfig {
            path: self.path.clone(),
            read_only: self.read_only,
            id: self.id.clone().unwrap_or_else(|| format!("disk{index}")),
        }
    }
}

/// Parses `PATH[,ro][,id=ID]` (a clap value parser).
pub fn parse_disk(s: &str) -> Result<DiskArg, String> {
    let mut parts = s.split(',');
    let path = parts.next().unwrap_or_default();
    if path.is_empty() {
        return Err("expected PATH[,ro][,id=ID]".into());
    }
    let mut arg = DiskArg {
        path: PathBuf::from(path),
        read_only: false,
        id: None,
    };
    for opt in parts {
        match opt.split_once('=') {
            None if opt == "ro" => arg.read_only = true,
            None if opt == "rw" => arg.read_only = false,
            Some(("id", id)) if !id.is_empty() => arg.id = Some(id.to_string()),
            _ => return Err(format!("unknown disk option {opt:?} (ro, rw, id=ID)")),
        }
    }
    Ok(arg)
}

/// `--share TAG[=DIR][,ro]`: a virtio-fs share; without DIR (templates
/// only) the directory is given when a VM is started from the template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareArg {
    pub tag: String,
    pub dir: Option<PathBuf>,
    pub read_only: bool,
}

impl ShareArg {
    /// The VMM's share config.
    pub fn config(&self) -> ShareConfig {
        ShareConfig {
            tag: self.tag.clone(),
            shared_dir: self.dir.clone(),
            read_only: self.read_only,
        }
    }
}

/// Parses `TAG[=DIR][,ro]` (a clap value parser).
pub fn parse_share(s: &str) -> Result<ShareArg, String> {
    let (main, ro) = match s.rsplit_once(',') {
        Some((m, "ro")) => (m, true),
        Some((m, "rw")) => (m, false),
        _ => (s, false),
    };
    let (tag, dir) = match main.split_once('=') {
        Some((t, d)) if !d.is_empty() => (t, Some(PathBuf::from(d))),
        Some(_) => return Err("expected TAG=DIR[,ro]: DIR is empty".into()),
        None => (main, None),
    };
    if tag.is_empty() {
        return Err("expected TAG=DIR[,ro]: TAG is empty".into());
    }
    Ok(ShareArg {
        tag: tag.to_string(),
        dir,
        read_only: ro,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disks() {
        let d = parse_disk("/a.img").unwrap();
        assert_eq!((d.read_only, d.id.as_deref()), (false, None));
        assert_eq!(d.config(2).id, "disk2");
        let d = parse_disk("/a,b.img,ro,id=root").unwrap_err();
        assert!(d.contains("b.img"), "{d}");
        let d = parse_disk("/a.img,ro,id=root").unwrap();
        assert_eq!(d.path, PathBuf::from("/a.img"));
        assert!(d.read_only);
        assert_eq!(d.config(0).id, "root");
        assert!(parse_disk("").is_err());
        assert!(parse_disk(",ro").is_err());
        assert!(parse_disk("/a.img,id=").is_err());
        assert!(parse_disk("/a.img,rox").is_err());
    }

    #[test]
    fn shares() {
        let s = parse_share("data=/srv/x,ro").unwrap();
        assert_eq!(s.tag, "data");
        assert_eq!(s.dir, Some(PathBuf::from("/srv/x")));
        assert!(s.read_only);
        let s = parse_share("data=/srv/x").unwrap();
        assert!(!s.read_only);
        let s = parse_share("late").unwrap();
        assert_eq!((s.tag.as_str(), s.dir.as_ref()), ("late", None));
        assert!(parse_share("=/x").is_err());
        assert!(parse_share("t=").is_err());
        assert!(parse_share("").is_err());
    }
}
