//! `wisp run`: the library is put first in LD_PRELOAD, settings become
//! environment, and every mistake is reported before the program starts.

use std::path::PathBuf;
use std::process::Command;

const WISP: &str = env!("CARGO_BIN_EXE_wisp");

fn wisp_run(args: &[&str]) -> std::process::Output {
    Command::new(WISP).arg("run").args(args).output().unwrap()
}

#[test]
fn exports_settings_and_prepends_the_library() {
    let lib = PathBuf::from(WISP).with_file_name("libwisp.so");
    if !lib.is_file() {
        // cargo test builds the cdylib beside the binary; say so if not.
        panic!("{} not built", lib.display());
    }
    let out = Command::new(WISP)
        .args([
            "run",
            "--proxy",
            "10.0.0.1:5060",
            "--name",
            "sip:bob@wxyz.com",
            "--log",
            "debug",
            "--",
        ])
        .args([
            "sh",
            "-c",
            "echo \"$LD_PRELOAD|$WISP_PROXY|$WISP_NAME|$WISP_LOG\"",
        ])
        .env("LD_PRELOAD", "/some/other.so")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let expected = format!(
        "{}:/some/other.so|10.0.0.1:5060|sip:bob@wxyz.com|debug",
        lib.canonicalize().unwrap().display()
    );
    assert_eq!(text.trim(), expected);
}

#[test]
fn bad_flags_fail_before_the_program_runs() {
    let marker = std::env::temp_dir().join(format!("wisp-run-marker-{}", std::process::id()));
    let touch = format!("touch {}", marker.display());
    for bad in [
        vec!["--log", "loud"],
        vec!["--proxy", "nowhere"],
        vec!["--name", "bob"],
        vec!["--hosts", "/nonexistent/hosts"],
        vec!["--connect-timeout", "-3"],
        vec!["--bogus"],
    ] {
        let mut args = bad.clone();
        args.extend(["--", "sh", "-c", &touch]);
        let out = wisp_run(&args);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(bad[0]) || err.contains("--bogus"),
            "{bad:?}: message names the flag: {err}"
        );
        assert!(!marker.exists(), "{bad:?}: the program ran");
    }
    let out = wisp_run(&[]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_missing_library_is_reported() {
    let dir = std::env::temp_dir().join(format!("wisp-run-nolib-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("wisp");
    std::fs::copy(WISP, &copy).unwrap();
    // A fresh copy can be "text file busy" for a moment when a parallel
    // test forks while the copy's write descriptor is open.
    let out = (0..100)
        .find_map(
            |_| match Command::new(&copy).args(["run", "--", "true"]).output() {
                Err(e) if e.raw_os_error() == Some(26) => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    None
                }
                other => Some(other.unwrap()),
            },
        )
        .expect("copy stayed busy");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("libwisp.so not found"));
}
