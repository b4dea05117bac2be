//! Property tests: parsing never panics, and what one side writes the other side reads back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use aparte_signaling_protocol::token::{self, Claims};
use aparte_signaling_protocol::{ClientMessage, RoomId, ServerMessage};
use proptest::prelude::*;
use serde_json::value::RawValue;

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        ".{0,40}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(serde_json::Value::from),
            prop::collection::btree_map("[a-z]{1,8}", inner, 0..8)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn parsing_arbitrary_text_never_panics(text in ".{0,300}") {
        let _ = ClientMessage::parse(&text);
        let _ = ServerMessage::parse(&text);
    }

    #[test]
    fn parsing_arbitrary_json_never_panics(v in json_value(), ty in "[a-z_]{0,10}") {
        let mut obj = serde_json::Map::new();
        obj.insert("type".into(), serde_json::Value::from(ty));
        obj.insert("payload".into(), v.clone());
        obj.insert("to".into(), v);
        let text = serde_json::Value::Object(obj).to_string();
        let _ = ClientMessage::parse(&text);
        let _ = ServerMessage::parse(&text);
    }

    #[test]
    fn relay_payloads_survive_byte_for_byte(v in json_value(), to in proptest::option::of(any::<u64>())) {
        let payload = RawValue::from_string(v.to_string()).unwrap();
        let sent = ClientMessage::Relay { to, payload };
        let got = ClientMessage::parse(&sent.to_json()).unwrap();
        match got {
            ClientMessage::Relay { to: t, payload: p } => {
                prop_assert_eq!(t, to);
                prop_assert_eq!(p.get(), v.to_string());
                // And the server's relay to the receiver carries the same bytes.
                let out = ServerMessage::Relay { from: 1, payload: p }.to_json();
                match ServerMessage::parse(&out).unwrap() {
                    ServerMessage::Relay { payload, .. } => prop_assert_eq!(payload.get(), v.to_string()),
                    other => prop_assert!(false, "{other:?}"),
                }
            }
            other => prop_assert!(false, "{other:?}"),
        }
    }

    #[test]
    fn tokens_verify_only_unchanged(
        exp in 1u64..u32::MAX as u64,
        label in proptest::option::of("[A-Za-z0-9._@-]{1,64}"),
        flip in 0usize..200,
    ) {
        let secret = b"property-test-secret-0123456789abcdef";
        let room = RoomId::random(&mut rand_core::OsRng);
        let claims = Claims { room: room.to_string(), exp, label };
        let t = token::mint(secret, &claims).unwrap();
        prop_assert_eq!(token::verify(secret, &t, &room, exp - 1), Ok(claims));
        let mut bytes = t.into_bytes();
        let i = flip % bytes.len();
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        if let Ok(tampered) = String::from_utf8(bytes) {
            prop_assert!(token::verify(secret, &tampered, &room, exp - 1).is_err());
        }
    }
}
