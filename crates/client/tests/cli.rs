//! The `aparte` command's offline subcommands, run as a user would run them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn aparte(home: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_aparte"))
        .env("APARTE_HOME", home)
        .args(args)
        .output()
        .expect("run aparte")
}

#[test]
fn room_new_prints_a_128_bit_room_id() {
    let home = tempfile::tempdir().unwrap();
    let out = aparte(home.path(), &["room", "new"]);
    assert!(out.status.success());
    let a = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let b = String::from_utf8(aparte(home.path(), &["room", "new"]).stdout).unwrap();
    assert_ne!(a, b.trim());
    assert!(a.len() >= 22, "{a}");
}

#[test]
fn id_creates_one_private_identity_and_keeps_it() {
    let home = tempfile::tempdir().unwrap();
    let first = aparte(home.path(), &["id"]);
    assert!(first.status.success());
    assert!(String::from_utf8_lossy(&first.stderr).contains("created a new identity"));
    let second = aparte(home.path(), &["id"]);
    assert_eq!(first.stdout, second.stdout);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(home.path().join("identity"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[test]
fn peers_starts_empty_and_bad_input_gets_a_clear_error() {
    let home = tempfile::tempdir().unwrap();
    let out = aparte(home.path(), &["peers"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "no known peers"
    );
    let out = aparte(
        home.path(),
        &["call", "--server", "ws://127.0.0.1:9/ws", "--room", "short"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--room"));
    let out = aparte(
        home.path(),
        &[
            "call",
            "--server",
            "ws://127.0.0.1:9/ws",
            "--room",
            "PUZ3L1CZ48JDc3EURQ4wOg",
            "--duration=0",
        ],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--duration"));
}
