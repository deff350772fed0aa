//! Where status sockets live and what their names mean. Shared by the
//! library (which makes them) and `wisp status` (which reads and tidies
//! them): std and libc only, so the CLI includes this file by path.
//!
//! `$XDG_RUNTIME_DIR/wisp/` (or `/run/wisp/` when that is unset), mode 0700,
//! owned by the user; in it one socket per process, `<pid>.sock`, mode
//! 0600. A socket is made as `<pid>.tmp` and renamed once it listens, so a
//! `<pid>.sock` that refuses connections is one whose process is gone.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The directory for a given `$XDG_RUNTIME_DIR` (only an absolute one
/// counts, as the XDG spec says).
pub fn dir_from(xdg_runtime_dir: Option<&OsStr>) -> PathBuf {
    match xdg_runtime_dir {
        Some(d) if d.as_bytes().first() == Some(&b'/') => Path::new(d).join("wisp"),
        _ => PathBuf::from("/run/wisp"),
    }
}

/// The socket of process `pid` once it listens.
pub fn socket_name(pid: u32) -> String {
    format!("{pid}.sock")
}

/// The socket of process `pid` while it is being set up.
pub fn tmp_name(pid: u32) -> String {
    format!("{pid}.tmp")
}

/// A directory entry's pid, and whether it is a socket still being set up.
pub fn parse_name(name: &OsStr) -> Option<(u32, bool)> {
    let name = name.to_str()?;
    let (pid, tmp) = match (name.strip_suffix(".sock"), name.strip_suffix(".tmp")) {
        (Some(p), _) => (p, false),
        (None, Some(p)) => (p, true),
        _ => return None,
    };
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((pid.parse().ok().filter(|&p| p > 0)?, tmp))
}

/// Whether a process with this pid exists (EPERM: it does, someone
/// else's).
pub fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks for existence.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Check that `dir` is a real directory (not a symlink) owned by us with
/// nobody else let in; a mode that lets others in is narrowed to 0700.
pub fn check_dir(dir: &Path) -> Result<(), String> {
    let md = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !md.file_type().is_dir() {
        return Err(format!("{}: not a directory", dir.display()));
    }
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if md.uid() != me {
        return Err(format!(
            "{}: owned by uid {}, not {me}; not used",
            dir.display(),
            md.uid()
        ));
    }
    if md.mode() & 0o777 != 0o700 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("{}: chmod 0700: {e}", dir.display()))?;
    }
    Ok(())
}

/// Make the directory (0700) if it is missing, then [`check_dir`] it.
pub fn make_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    }
    check_dir(dir)
}

/// The (device, inode) of a path itself, not of what a symlink names.
pub fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// Remove `path` if it is still the file `id` was taken from: a process
/// that reused a dead one's pid may have put its own socket there since.
pub fn remove_if_same(path: &Path, id: Option<(u64, u64)>) -> bool {
    if id.is_some() && identity(path) == id {
        std::fs::remove_file(path).is_ok()
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_rules() {
        assert_eq!(
            dir_from(Some(OsStr::new("/run/user/1000"))),
            PathBuf::from("/run/user/1000/wisp")
        );
        assert_eq!(dir_from(None), PathBuf::from("/run/wisp"));
        assert_eq!(dir_from(Some(OsStr::new(""))), PathBuf::from("/run/wisp"));
        assert_eq!(
            dir_from(Some(OsStr::new("relative"))),
            PathBuf::from("/run/wisp")
        );
    }

    #[test]
    fn names() {
        assert_eq!(parse_name(OsStr::new("123.sock")), Some((123, false)));
        assert_eq!(parse_name(OsStr::new("123.tmp")), Some((123, true)));
        assert_eq!(parse_name(OsStr::new(&socket_name(7))), Some((7, false)));
        assert_eq!(parse_name(OsStr::new(&tmp_name(7))), Some((7, true)));
        for bad in ["x.sock", ".sock", "0.sock", "-1.sock", "12", "12.sock.bak"] {
            assert_eq!(parse_name(OsStr::new(bad)), None, "{bad}");
        }
    }

    #[test]
    fn own_pid_is_alive() {
        assert!(pid_alive(std::process::id()));
        assert!(!pid_alive(u32::MAX));
    }
}
