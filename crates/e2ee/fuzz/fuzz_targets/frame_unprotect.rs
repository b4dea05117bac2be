//! Frame header parsing and unprotect on arbitrary bytes. The first byte picks one of a few
//! receiver states (fresh, mid-call, after a rekey) so the key-id paths are all reachable; the
//! rest is the frame. Nothing may panic, nothing may be accepted (the fuzzer cannot forge a tag),
//! and a rejected frame must not change what a genuine frame does next.
#![no_main]

use aparte_e2ee::frame::{
    Direction, FrameHeader, FrameReceiver, FrameSender, ReceiverConfig, SenderConfig,
};
use aparte_e2ee::keys::Secret32;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, frame)) = data.split_first() else {
        return;
    };
    if let Ok((header, len)) = FrameHeader::parse(frame) {
        let mut encoded = Vec::new();
        header.encode(&mut encoded);
        assert_eq!(
            encoded.as_slice(),
            &frame[..len],
            "header encoding must be canonical"
        );
    }
    let chain = Secret32::from_bytes([9; 32]);
    let mut sender = FrameSender::new(
        Direction::InitiatorToResponder,
        chain.clone(),
        SenderConfig::default(),
    );
    let mut receiver = FrameReceiver::new(
        Direction::InitiatorToResponder,
        chain,
        ReceiverConfig::default(),
    );
    for _ in 0..(mode % 4) {
        let f = sender.protect(b"warm-up").unwrap();
        receiver.unprotect(&f, 0).unwrap();
        sender.rekey().unwrap();
    }
    assert!(receiver.unprotect(frame, u64::from(mode)).is_err());
    let genuine = sender.protect(b"after").unwrap();
    assert_eq!(
        receiver.unprotect(&genuine, u64::from(mode)).unwrap(),
        b"after"
    );
});
