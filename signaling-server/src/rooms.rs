//! The room registry: who is in which room, and delivery of messages to members.
//!
//! Every member has a bounded send queue. Delivery never waits: when a member's queue is full
//! the member is kicked as a slow consumer (its connection task closes it with a reason), so one
//! slow client can never hold up another or make the server buffer without bound.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use aparte_signaling_protocol::{
    LeaveReason, PeerId, PeerInfo, ResumeToken, RoomId, ServerMessage,
};
use axum::extract::ws::Utf8Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// How a room appears in the log: the first 8 hex digits of the SHA-256 of its id. Enough to
/// follow one room through the log; the id itself is a capability (whoever knows it can join)
/// and never appears.
pub(crate) fn room_tag(room: &RoomId) -> String {
    use sha2::Digest as _;
    crate::tls::hex_prefix(&sha2::Sha256::digest(room.as_str().as_bytes()), 4)
}

/// A member's handle, held by the registry.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    /// Peer id.
    pub(crate) id: PeerId,
    /// Label from the member's token.
    pub(crate) label: Option<String>,
    /// The member's bounded send queue.
    pub(crate) tx: mpsc::Sender<Utf8Bytes>,
    /// Cancelled when the member must be disconnected as a slow consumer.
    pub(crate) kick: CancellationToken,
    /// The token a later join presents to take this member's seat.
    pub(crate) resume: ResumeToken,
    /// Cancelled when a join took this member's seat with its resume token.
    pub(crate) replaced: CancellationToken,
}

impl Member {
    fn info(&self) -> PeerInfo {
        PeerInfo {
            peer_id: self.id,
            label: self.label.clone(),
        }
    }
}

/// The room is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RoomFull;

/// Nobody to relay to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PeerNotFound;

/// All rooms.
#[derive(Debug, Default)]
pub(crate) struct Rooms {
    rooms: Mutex<HashMap<RoomId, Vec<Member>>>,
}

/// Queues `text` for `member`; kicks it when its queue is full. Returns whether it was queued.
fn deliver(member: &Member, text: &Utf8Bytes, metrics: &Metrics) -> bool {
    match member.tx.try_send(text.clone()) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            if !member.kick.is_cancelled() {
                metrics.reject("slow_consumer");
                member.kick.cancel();
            }
            false
        }
        // The member's connection is closing; it leaves the room on its own.
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

impl Rooms {
    /// Adds `member` to `room` if there is space, tells the members already there, and
    /// returns them. With `resume` matching a member of the room, that member leaves first
    /// (the others see it leave, its connection is told to close): the client that lost its
    /// connection takes its seat back without waiting for the old one to time out.
    pub(crate) fn join(
        &self,
        room: &RoomId,
        member: Member,
        capacity: usize,
        resume: Option<&ResumeToken>,
        metrics: &Metrics,
    ) -> Result<Vec<PeerInfo>, RoomFull> {
        let mut rooms = self.rooms.lock().unwrap_or_else(PoisonError::into_inner);
        let members = rooms.entry(room.clone()).or_default();
        // Compared with every member, in constant time, whether or not one matches.
        let resumed = resume.and_then(|token| {
            members.iter().fold(None, |found, m| {
                if m.resume == *token {
                    Some(m.id)
                } else {
                    found
                }
            })
        });
        if let Some(old) = resumed {
            if let Some(at) = members.iter().position(|m| m.id == old) {
                let old_member = members.remove(at);
                old_member.replaced.cancel();
                metrics.resumes.inc();
                let left = Utf8Bytes::from(
                    ServerMessage::PeerLeft {
                        peer_id: old,
                        reason: LeaveReason::Disconnected,
                    }
                    .to_json(),
                );
                for m in members.iter() {
                    deliver(m, &left, metrics);
                }
            }
        }
        if members.len() >= capacity {
            if members.is_empty() {
                rooms.remove(room);
            }
            return Err(RoomFull);
        }
        if members.is_empty() && resumed.is_none() {
            metrics.rooms.inc();
        }
        let text = Utf8Bytes::from(
            ServerMessage::PeerJoined {
                peer_id: member.id,
                label: member.label.clone(),
            }
            .to_json(),
        );
        let peers = members.iter().map(Member::info).collect();
        for m in members.iter() {
            deliver(m, &text, metrics);
        }
        members.push(member);
        Ok(peers)
    }

    /// Removes peer `id` from `room`, tells the others, and drops the room when it is empty.
    pub(crate) fn leave(&self, room: &RoomId, id: PeerId, reason: LeaveReason, metrics: &Metrics) {
        let mut rooms = self.rooms.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(members) = rooms.get_mut(room) else {
            return;
        };
        let before = members.len();
        members.retain(|m| m.id != id);
        if members.len() == before {
            return;
        }
        if members.is_empty() {
            rooms.remove(room);
            metrics.rooms.dec();
            return;
        }
        let text = Utf8Bytes::from(
            ServerMessage::PeerLeft {
                peer_id: id,
                reason,
            }
            .to_json(),
        );
        for m in members.iter() {
            deliver(m, &text, metrics);
        }
    }

    /// Queues `text` for peer `to` in `room`, or for every member but `from` when `to` is
    /// `None`. Returns how many members it was queued for.
    pub(crate) fn relay(
        &self,
        room: &RoomId,
        from: PeerId,
        to: Option<PeerId>,
        text: &Utf8Bytes,
        metrics: &Metrics,
    ) -> Result<usize, PeerNotFound> {
        let rooms = self.rooms.lock().unwrap_or_else(PoisonError::into_inner);
        let members = rooms.get(room).ok_or(PeerNotFound)?;
        let mut targets = members
            .iter()
            .filter(|m| m.id != from && to.is_none_or(|t| t == m.id))
            .peekable();
        if targets.peek().is_none() {
            return Err(PeerNotFound);
        }
        let mut queued = 0;
        for m in targets {
            if deliver(m, text, metrics) {
                queued += 1;
                metrics.messages_relayed.inc();
                metrics.relayed_message_bytes.inc_by(text.len() as u64);
            }
        }
        Ok(queued)
    }

    /// Number of live rooms.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.rooms
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: PeerId, queue: usize) -> (Member, mpsc::Receiver<Utf8Bytes>) {
        let (tx, rx) = mpsc::channel(queue);
        (
            Member {
                id,
                label: None,
                tx,
                kick: CancellationToken::new(),
                resume: ResumeToken::random(&mut rand_core::OsRng),
                replaced: CancellationToken::new(),
            },
            rx,
        )
    }

    fn room() -> RoomId {
        RoomId::parse("abcdefghijklmnopqrstuv").unwrap()
    }

    #[test]
    fn room_tag_is_a_short_hash() {
        let tag = room_tag(&room());
        assert_eq!(tag.len(), 8);
        assert!(tag.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(!room().as_str().contains(&tag));
    }

    #[test]
    fn join_relay_leave() {
        let m = Metrics::new();
        let rooms = Rooms::default();
        let (a, mut ra) = member(1, 8);
        let (b, mut rb) = member(2, 8);
        let (c, _rc) = member(3, 8);
        assert_eq!(rooms.join(&room(), a, 2, None, &m).unwrap(), vec![]);
        assert_eq!(rooms.join(&room(), b, 2, None, &m).unwrap().len(), 1);
        assert!(ra.try_recv().unwrap().as_str().contains("peer_joined"));
        assert_eq!(rooms.join(&room(), c, 2, None, &m), Err(RoomFull));
        let text = Utf8Bytes::from("x");
        assert_eq!(rooms.relay(&room(), 1, None, &text, &m), Ok(1));
        assert_eq!(rb.try_recv().unwrap().as_str(), "x");
        assert_eq!(
            rooms.relay(&room(), 1, Some(9), &text, &m),
            Err(PeerNotFound)
        );
        rooms.leave(&room(), 2, LeaveReason::Left, &m);
        assert!(ra.try_recv().unwrap().as_str().contains("peer_left"));
        assert_eq!(rooms.relay(&room(), 1, None, &text, &m), Err(PeerNotFound));
        rooms.leave(&room(), 1, LeaveReason::Left, &m);
        assert_eq!(rooms.len(), 0);
        assert_eq!(m.rooms.get(), 0);
    }

    #[test]
    fn full_queue_kicks_the_slow_member() {
        let m = Metrics::new();
        let rooms = Rooms::default();
        let (a, _ra) = member(1, 8);
        let (b, _rb) = member(2, 1);
        let kick = b.kick.clone();
        rooms.join(&room(), a, 2, None, &m).unwrap();
        rooms.join(&room(), b, 2, None, &m).unwrap();
        let text = Utf8Bytes::from("x");
        assert_eq!(rooms.relay(&room(), 1, None, &text, &m), Ok(1));
        assert!(!kick.is_cancelled());
        assert_eq!(rooms.relay(&room(), 1, None, &text, &m), Ok(0));
        assert!(kick.is_cancelled());
    }

    #[test]
    fn a_resume_token_takes_the_seat_of_its_member_only() {
        let m = Metrics::new();
        let rooms = Rooms::default();
        let (a, _ra) = member(1, 8);
        let (b, mut rb) = member(2, 8);
        let (a_again, _ra2) = member(3, 8);
        let (stranger, _rs) = member(4, 8);
        let (a_token, a_replaced) = (a.resume.clone(), a.replaced.clone());
        rooms.join(&room(), a, 2, None, &m).unwrap();
        rooms.join(&room(), b, 2, None, &m).unwrap();
        // A token that matches nobody is no way in.
        let wrong = ResumeToken::random(&mut rand_core::OsRng);
        assert_eq!(
            rooms.join(&room(), stranger, 2, Some(&wrong), &m),
            Err(RoomFull)
        );
        // A's token in another room takes nothing.
        let other = RoomId::parse("zyxwvutsrqponmlkjihgfe").unwrap();
        let (c, _rc) = member(5, 8);
        assert_eq!(
            rooms.join(&other, c, 2, Some(&a_token), &m).unwrap(),
            vec![]
        );
        assert!(!a_replaced.is_cancelled());
        // In its room it takes A's seat: B sees A leave and the new member join.
        let peers = rooms.join(&room(), a_again, 2, Some(&a_token), &m).unwrap();
        assert_eq!(peers.iter().map(|p| p.peer_id).collect::<Vec<_>>(), vec![2]);
        assert!(a_replaced.is_cancelled());
        assert!(rb
            .try_recv()
            .unwrap()
            .as_str()
            .contains(r#""peer_left","peer_id":1"#));
        assert!(rb
            .try_recv()
            .unwrap()
            .as_str()
            .contains(r#""peer_joined","peer_id":3"#));
        assert_eq!(m.resumes.get(), 1);
        assert_eq!(m.rooms.get(), 2);
        // The old connection's own leave, when it closes, changes nothing.
        rooms.leave(&room(), 1, LeaveReason::Disconnected, &m);
        assert!(rb.try_recv().is_err());
    }
}
