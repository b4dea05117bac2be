//! Embeds the browser peer's page (`web/dist/`, made by `scripts/build-web`) in the server
//! binary, so the one binary a user copies to a VPS also serves the page (docs/DECISIONS.md,
//! D10). Without a built page, the server still builds, warns, and answers `/` with a page
//! that says how to build it, never with a broken one.
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::path::PathBuf;

/// The files of the page, with their content types.
const FILES: [(&str, &str); 4] = [
    ("index.html", "text/html; charset=utf-8"),
    ("app.js", "text/javascript; charset=utf-8"),
    ("worker.js", "text/javascript; charset=utf-8"),
    ("style.css", "text/css; charset=utf-8"),
];

fn main() {
    println!("cargo:rerun-if-env-changed=APARTE_WEB_DIST");
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    let dist = std::env::var_os("APARTE_WEB_DIST")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../web/dist"));
    println!("cargo:rerun-if-changed={}", dist.display());
    let complete = FILES.iter().all(|(name, _)| dist.join(name).is_file());
    let mut code = String::from("/// The embedded page: (file name, content type, bytes).\n");
    code.push_str("pub(crate) static ASSETS: &[(&str, &str, &[u8])] = &[\n");
    if complete {
        for (name, content_type) in FILES {
            let path = dist.join(name);
            println!("cargo:rerun-if-changed={}", path.display());
            let _ = writeln!(
                code,
                "    ({name:?}, {content_type:?}, include_bytes!({:?})),",
                path.display().to_string()
            );
        }
    } else {
        println!(
            "cargo:warning=the browser page is not built ({} is missing files): \
             aparte-signaling will answer / with a page saying so. \
             Run `bash scripts/build-web`, then build again.",
            dist.display()
        );
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_default()).join("web_assets.rs");
    if let Err(e) = std::fs::write(&out, code) {
        println!("cargo:warning=cannot write {}: {e}", out.display());
        std::process::exit(1);
    }
}
