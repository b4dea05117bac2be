//! Drives a handshake to a given state, then feeds it fuzzer bytes. Checks: no panic; a message
//! that parses re-encodes to the same bytes; a rejected non-fatal message leaves the state as it
//! was; and after any input, the genuine message still behaves as the state machine says.

use aparte_e2ee::handshake::messages::Message;
use aparte_e2ee::handshake::{CallParams, Handshake};
use rand_core::OsRng;

#[allow(dead_code)] // each target uses one variant
pub enum Stage {
    ResponderAwaitingCommit,
    InitiatorAwaitingResponse,
    ResponderAwaitingReveal,
    InitiatorAwaitingConfirm,
}

pub fn check_parser(data: &[u8], stage: Stage) {
    if let Ok(message) = Message::parse(data) {
        assert_eq!(message.encode(), data, "message encoding must be canonical");
    }
    let room = b"room".to_vec();
    let (fa, fb) = (b"fp-a".to_vec(), b"fp-b".to_vec());
    let (mut alice, commit) = Handshake::initiator(
        CallParams::new(room.clone(), fa.clone(), fb.clone()).unwrap(),
        None,
        &mut OsRng,
    )
    .unwrap();
    let mut bob =
        Handshake::responder(CallParams::new(room, fb, fa).unwrap(), None, &mut OsRng).unwrap();
    let (target, genuine) = match stage {
        Stage::ResponderAwaitingCommit => (&mut bob, commit),
        Stage::InitiatorAwaitingResponse => {
            let response = bob.receive(&commit).unwrap().unwrap();
            (&mut alice, response)
        }
        Stage::ResponderAwaitingReveal => {
            let response = bob.receive(&commit).unwrap().unwrap();
            let reveal = alice.receive(&response).unwrap().unwrap();
            (&mut bob, reveal)
        }
        Stage::InitiatorAwaitingConfirm => {
            let response = bob.receive(&commit).unwrap().unwrap();
            let reveal = alice.receive(&response).unwrap().unwrap();
            let confirm = bob.receive(&reveal).unwrap().unwrap();
            (&mut alice, confirm)
        }
    };
    let before = target.state();
    match target.receive(data) {
        Ok(_) => {}
        Err(e) if !e.is_fatal() => assert_eq!(target.state(), before),
        Err(_) => return,
    }
    if data != genuine.as_slice() && target.state() == before {
        assert!(
            target.receive(&genuine).is_ok(),
            "genuine message refused after junk"
        );
    }
}
