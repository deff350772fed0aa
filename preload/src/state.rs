//! Process-wide state, created on the first use of a wisp name.

use crate::config::Config;
use crate::names::NameMap;
use std::sync::OnceLock;

pub struct Shared {
    pub config: Config,
    pub names: NameMap,
}

static SHARED: OnceLock<Shared> = OnceLock::new();

/// Config and name map, loaded once. Bad settings and bad map lines are
/// logged here, once per process.
pub fn shared() -> &'static Shared {
    SHARED.get_or_init(|| {
        let (config, errors) = Config::from_vars(|k| std::env::var(k).ok());
        crate::log::set_level(config.level);
        if let Some(path) = &config.log_file {
            open_log(path);
        }
        for e in errors {
            warn!("{e}");
        }
        let names = match std::fs::read_to_string(&config.hosts) {
            Ok(text) => {
                let (map, bad) = NameMap::parse(&text);
                for b in bad {
                    warn!(
                        "{}:{}: {}; line skipped",
                        config.hosts.display(),
                        b.line,
                        b.reason
                    );
                }
                map
            }
            Err(e) => {
                debug!("no name map at {}: {e}", config.hosts.display());
                NameMap::default()
            }
        };
        Shared { config, names }
    })
}

/// Loaded already? Lets the hot path skip work for processes that never
/// resolved a wisp name.
pub fn loaded() -> Option<&'static Shared> {
    SHARED.get()
}

fn open_log(path: &std::path::Path) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: valid C string; O_CLOEXEC so exec'd children do not inherit it.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT | libc::O_CLOEXEC,
            0o600,
        )
    };
    if fd >= 0 {
        crate::log::set_fd(fd);
    } else {
        warn!(
            "WISP_LOG_FILE={}: cannot open; logging to stderr",
            path.display()
        );
    }
}
