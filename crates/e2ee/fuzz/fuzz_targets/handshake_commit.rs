//! A responder waiting for Commit is fed arbitrary bytes.
#![no_main]

mod common;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| common::check_parser(data, common::Stage::ResponderAwaitingCommit));
