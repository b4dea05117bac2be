//! `aparte-signaling`: the aparté signaling server, the one binary a user runs on a VPS they do
//! not trust with content. Everything is in the library (`aparte_signaling_server`).
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    aparte_signaling_server::run_cli()
}
