//! The known-peers file parser on arbitrary text: no panic, and what parses re-encodes to
//! something that parses to the same store.
#![no_main]

use aparte_e2ee::identity::KnownPeers;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(peers) = KnownPeers::parse(text) {
        assert_eq!(KnownPeers::parse(&peers.encode()).unwrap(), peers);
    }
});
