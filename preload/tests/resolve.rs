//! Name resolution under libwisp.so: mapped names get placeholders of both
//! families, reverse lookups give the name back, other names reach the real
//! resolver, and a bad map line is reported with its line number.

use std::path::PathBuf;
use std::process::Command;

const WISP: &str = env!("CARGO_BIN_EXE_wisp");

fn lib() -> PathBuf {
    PathBuf::from(WISP).with_file_name("libwisp.so")
}

const CHECKS: &str = r#"
import socket
fams = sorted({ai[0] for ai in socket.getaddrinfo("bob.wxyz", 80, proto=socket.IPPROTO_TCP)})
print("families", [int(f) for f in fams])
print("v4", socket.getaddrinfo("bob.wxyz", "http", socket.AF_INET, socket.SOCK_STREAM)[0][4])
print("v6", socket.getaddrinfo("BOB", 8080, socket.AF_INET6, socket.SOCK_STREAM)[0][4][:2])
print("byname", socket.gethostbyname("bob.wxyz"))
print("ex", socket.gethostbyname_ex("fred.abcd")[2])
print("addr4", socket.gethostbyaddr("198.18.0.1")[0])
print("addr6", socket.gethostbyaddr("100::2")[0])
print("nameinfo", socket.getnameinfo(("198.18.0.2", 443), 0))
print("numeric", socket.getnameinfo(("198.18.0.2", 443), socket.NI_NUMERICHOST))
print("localhost", socket.getaddrinfo("localhost", 80, socket.AF_INET)[0][4][0])
try:
    socket.getaddrinfo("bob.wxyz", "no-such-service")
except socket.gaierror as e:
    print("service-error", e.errno == socket.EAI_SERVICE)
"#;

#[test]
fn mapped_names_resolve_both_ways_and_others_pass_through() {
    let dir = std::env::temp_dir().join(format!("wisp-resolve-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let hosts = dir.join("hosts");
    std::fs::write(
        &hosts,
        "# test map\nsip:bob@wxyz.com bob.wxyz bob\n\nnot-a-uri x\nsip:fred@abcd.com fred.abcd\n",
    )
    .unwrap();
    let out = Command::new("python3")
        .args(["-c", CHECKS])
        .env("LD_PRELOAD", lib())
        .env("WISP_HOSTS", &hosts)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for want in [
        "families [2, 10]",
        "v4 ('198.18.0.1', 80)",
        "v6 ('100::1', 8080)",
        "byname 198.18.0.1",
        "ex ['198.18.0.2']",
        "addr4 bob.wxyz",
        "addr6 fred.abcd",
        "nameinfo ('fred.abcd', 'https')",
        "numeric ('198.18.0.2', 'https')",
        "localhost 127.0.0.1",
        "service-error True",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in\n{stdout}");
    }
    assert!(
        stderr.contains("hosts:4:"),
        "bad line reported with its number: {stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "only that warning: {stderr}");
}

#[test]
fn a_program_that_uses_no_name_sees_nothing() {
    let out = Command::new("/bin/true")
        .env("LD_PRELOAD", lib())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(out.stdout.is_empty() && out.stderr.is_empty());
}
