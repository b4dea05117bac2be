//! The `aparte` command's offline subcommands, run as a user would run them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

/// Runs `aparte` with its home (and so its default config file) in `home`, and none of the
/// developer's own settings.
fn aparte(home: &std::path::Path, args: &[&str]) -> std::process::Output {
    aparte_with(home, &[], args)
}

fn aparte_with(
    home: &std::path::Path,
    env: &[(&str, &std::path::Path)],
    args: &[&str],
) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_aparte"));
    for var in [
        "APARTE_CONFIG",
        "APARTE_SERVER",
        "APARTE_TOKEN",
        "ALSA_CONFIG_PATH",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("APARTE_HOME", home).envs(env.iter().copied());
    cmd.args(args).output().expect("run aparte")
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

const ROOM: &str = "--room=PUZ3L1CZ48JDc3EURQ4wOg";
/// Nothing listens on the discard port: a call that gets as far as signaling fails at once.
const DEAD_SERVER: &str = "ws://127.0.0.1:9/ws";

/// An ALSA configuration with no `default` device and no listed devices: a machine without a
/// sound card, whatever the machine running the test has.
fn alsa_without_devices(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("alsa.conf");
    std::fs::write(&path, "pcm.null {\n  type null\n}\n").unwrap();
    path
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

#[test]
fn devices_lists_both_directions_and_explains_a_machine_without_sound_card() {
    let home = tempfile::tempdir().unwrap();
    let out = aparte(home.path(), &["devices"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("Input devices (microphones)"), "{text}");
    assert!(text.contains("Output devices (speakers)"), "{text}");
    // alsa-lib's own stderr chatter is routed away from the user.
    assert!(!stderr(&out).contains("ALSA lib"), "{}", stderr(&out));
    let has_card = std::fs::read_to_string("/proc/asound/cards").is_ok_and(|t| {
        t.lines()
            .any(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
    });
    assert_eq!(text.contains("No sound card"), !has_card, "{text}");

    let alsa = alsa_without_devices(home.path());
    let out = aparte_with(home.path(), &[("ALSA_CONFIG_PATH", &alsa)], &["devices"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("NAME:\n  none\n  no usable default device: \"default\""),
        "{text}"
    );
    assert!(
        text.contains("Calls still work with --input FILE.wav|tone|silence"),
        "{text}"
    );
}

#[test]
fn mic_or_speaker_without_a_device_is_a_clear_error_before_any_network() {
    let home = tempfile::tempdir().unwrap();
    let alsa = alsa_without_devices(home.path());
    let env = [("ALSA_CONFIG_PATH", alsa.as_path())];
    let call = |extra: &[&str]| {
        let mut args = vec!["call", "--server", DEAD_SERVER, ROOM, "--tofu"];
        args.extend_from_slice(extra);
        aparte_with(home.path(), &env, &args)
    };
    for (extra, expect) in [
        (&["--input", "mic"][..], "no usable default microphone"),
        (&["--output", "speaker"], "no usable default speaker"),
        (
            &["--input", "mic", "--input-device", "nope"],
            "no microphone named \"nope\"",
        ),
    ] {
        let out = call(extra);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{extra:?}: {err}");
        assert!(err.contains(expect), "{extra:?}: {err}");
        let alternatives = if extra[1] == "speaker" {
            "--output FILE.wav or --output null"
        } else {
            "--input FILE.wav or --input tone"
        };
        assert!(err.contains(alternatives), "{extra:?}: {err}");
        assert!(err.contains("aparte devices"), "{extra:?}: {err}");
        // It failed on the device, before contacting the (dead) server.
        assert!(!err.contains("signaling"), "{extra:?}: {err}");
        assert!(!err.contains("panicked"), "{extra:?}: {err}");
    }
    let out = call(&["--input", "tone", "--input-device", "null"]);
    assert!(stderr(&out).contains("--input-device only applies to --input mic"));
}

#[test]
fn config_file_supplies_defaults_that_flags_override() {
    let home = tempfile::tempdir().unwrap();
    let out = aparte(home.path(), &["config", "path"]);
    assert_eq!(
        stdout(&out).trim(),
        home.path().join("config.toml").display().to_string()
    );
    assert!(stderr(&out).contains("does not exist yet"));

    // No server anywhere: say where one can come from.
    let out = aparte(home.path(), &["call", ROOM]);
    assert!(
        stderr(&out).contains("no signaling server: pass --server URL"),
        "{}",
        stderr(&out)
    );

    // The file's server and input (a microphone that does not exist) are used...
    std::fs::write(
        home.path().join("config.toml"),
        format!("server = \"{DEAD_SERVER}\"\ninput = \"mic\"\ninput_device = \"no-such-mic\"\n"),
    )
    .unwrap();
    let out = aparte(home.path(), &["config", "check"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("valid\n  server = ws://127.0.0.1:9/ws\n  input = mic"),
        "{}",
        stdout(&out)
    );
    let out = aparte(home.path(), &["call", ROOM, "--tofu"]);
    assert!(
        stderr(&out).contains("no microphone named \"no-such-mic\""),
        "{}",
        stderr(&out)
    );
    // ...until a flag overrides the input: then the call gets as far as the (dead) server.
    let out = aparte(home.path(), &["call", ROOM, "--tofu", "--input", "tone"]);
    let err = stderr(&out);
    assert!(err.contains("cannot reach the signaling server"), "{err}");
    assert_eq!(out.status.code(), Some(5), "a signaling failure: {err}");
    assert!(!err.contains("no-such-mic"), "{err}");
}

#[test]
fn a_bad_config_file_is_an_error_naming_the_file() {
    let home = tempfile::tempdir().unwrap();
    let path = home.path().join("config.toml");
    std::fs::write(&path, "server = \"ws://x/\"\nrelay-only = true\n").unwrap();
    for args in [
        &["call", ROOM][..],
        &["id"],
        &["peers"],
        &["config", "check"],
    ] {
        let out = aparte(home.path(), args);
        let err = stderr(&out);
        // For a call, a bad config file is bad usage (exit 2); elsewhere a plain failure.
        let code = if args[0] == "call" { 2 } else { 1 };
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(
            err.contains(&format!("error: config file {}", path.display())),
            "{args:?}: {err}"
        );
        assert!(
            err.contains("unknown field `relay-only`"),
            "{args:?}: {err}"
        );
    }
    // Commands that do not read settings still work.
    assert!(aparte(home.path(), &["room", "new"]).status.success());
    // An explicitly named config file must exist.
    let missing = home.path().join("missing.toml");
    let out = aparte(home.path(), &["--config", missing.to_str().unwrap(), "id"]);
    assert!(
        stderr(&out).contains(&format!("config file {}", missing.display())),
        "{}",
        stderr(&out)
    );
}
