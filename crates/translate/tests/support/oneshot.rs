//! One-shot `apertium -u MODE`, the reference our long-lived pipeline must equal.
//! Shared by `tests/engines.rs` and `tests/apertium_pairs.rs`.

use std::io::Write;
use std::process::{Command, Stdio};

/// What `apertium -u mode` prints for `text`, trimmed (the pipeline trims too).
pub(crate) fn oneshot_apertium(mode: &str, text: &str) -> String {
    let out = Command::new("apertium")
        .args(["-u", mode])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            if let Some(mut stdin) = child.stdin.take() {
                stdin.write_all(text.as_bytes())?;
            }
            child.wait_with_output()
        })
        .unwrap_or_else(|e| panic!("apertium is needed (bash scripts/install-models): {e}"));
    assert!(
        out.status.success(),
        "apertium -u {mode} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("apertium printed non-UTF-8")
        .trim()
        .to_string()
}
