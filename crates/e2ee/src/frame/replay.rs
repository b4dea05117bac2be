//! A sliding replay window (the block bitmap of RFC 6479): accepts each counter at most once,
//! tolerates reordering up to [`REPLAY_WINDOW`] frames behind the highest counter seen, and
//! rejects anything older. O(1) per frame, 80 bytes of state.
#![forbid(unsafe_code)]

use crate::error::FrameError;

const BLOCKS: usize = 9;
const BLOCKS_U64: u64 = BLOCKS as u64;
const BLOCK_BITS: u64 = 64;
/// How far behind the highest accepted counter a frame may arrive: 512 frames, about ten
/// seconds of 20 ms audio (RingRTC keeps 300, SRTP's default is 64).
pub const REPLAY_WINDOW: u64 = (BLOCKS_U64 - 1) * BLOCK_BITS;

/// Replay state for one key.
#[derive(Debug, Clone, Default)]
pub struct ReplayWindow {
    highest: Option<u64>,
    bitmap: [u64; BLOCKS],
}

impl ReplayWindow {
    /// An empty window.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `counter` may be accepted. Does not change state: call [`ReplayWindow::mark`]
    /// only after the frame authenticates, so forged frames cannot poison the window.
    pub fn check(&self, counter: u64) -> Result<(), FrameError> {
        let Some(highest) = self.highest else {
            return Ok(());
        };
        if counter > highest {
            return Ok(());
        }
        if highest.wrapping_sub(counter) >= REPLAY_WINDOW {
            return Err(FrameError::TooOld);
        }
        let (block, bit) = slot(counter);
        match self.bitmap.get(block) {
            Some(word) if word & bit == 0 => Ok(()),
            _ => Err(FrameError::Replayed),
        }
    }

    /// Records `counter` as accepted.
    pub fn mark(&mut self, counter: u64) {
        match self.highest {
            Some(highest) if counter <= highest => {}
            Some(highest) => {
                // Clear the blocks the window slides over.
                let steps = (counter / BLOCK_BITS).wrapping_sub(highest / BLOCK_BITS);
                if steps >= BLOCKS_U64 {
                    self.bitmap = [0; BLOCKS];
                } else {
                    let mut b = highest / BLOCK_BITS;
                    for _ in 0..steps {
                        b = b.wrapping_add(1);
                        if let Some(word) = self.bitmap.get_mut(block_index(b)) {
                            *word = 0;
                        }
                    }
                }
                self.highest = Some(counter);
            }
            None => {
                self.bitmap = [0; BLOCKS];
                self.highest = Some(counter);
            }
        }
        let (block, bit) = slot(counter);
        if let Some(word) = self.bitmap.get_mut(block) {
            *word |= bit;
        }
    }

    /// The highest counter accepted so far.
    pub fn highest(&self) -> Option<u64> {
        self.highest
    }
}

fn block_index(block: u64) -> usize {
    usize::try_from(block % BLOCKS_U64).unwrap_or(0)
}

fn slot(counter: u64) -> (usize, u64) {
    (
        block_index(counter / BLOCK_BITS),
        1u64 << (counter % BLOCK_BITS),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn accept(w: &mut ReplayWindow, c: u64) -> Result<(), FrameError> {
        w.check(c)?;
        w.mark(c);
        Ok(())
    }

    #[test]
    fn in_order_then_duplicates() {
        let mut w = ReplayWindow::new();
        for c in 0..2000 {
            accept(&mut w, c).unwrap();
        }
        assert_eq!(accept(&mut w, 1999), Err(FrameError::Replayed));
        assert_eq!(accept(&mut w, 1999 - 511), Err(FrameError::Replayed));
        assert_eq!(accept(&mut w, 1999 - 512), Err(FrameError::TooOld));
    }

    #[test]
    fn reorder_within_the_window_is_accepted_exactly_once() {
        let mut w = ReplayWindow::new();
        accept(&mut w, 1000).unwrap();
        for c in (1000 - 511..1000).rev() {
            accept(&mut w, c).unwrap();
            assert_eq!(accept(&mut w, c), Err(FrameError::Replayed));
        }
        assert_eq!(accept(&mut w, 1000 - 512), Err(FrameError::TooOld));
    }

    #[test]
    fn a_big_jump_clears_old_state() {
        let mut w = ReplayWindow::new();
        accept(&mut w, 5).unwrap();
        accept(&mut w, 100_000).unwrap();
        assert_eq!(accept(&mut w, 5), Err(FrameError::TooOld));
        accept(&mut w, 100_000 - 300).unwrap();
        accept(&mut w, u64::MAX).unwrap();
        assert_eq!(accept(&mut w, u64::MAX), Err(FrameError::Replayed));
    }

    proptest! {
        /// The window agrees with a naive model (a set of everything accepted) for any
        /// sequence of counters.
        #[test]
        fn matches_a_naive_model(counters in proptest::collection::vec(0u64..3000, 1..600)) {
            let mut w = ReplayWindow::new();
            let mut seen = std::collections::HashSet::new();
            let mut highest: Option<u64> = None;
            for c in counters {
                let expected = match highest {
                    Some(h) if c <= h && h - c >= REPLAY_WINDOW => Err(FrameError::TooOld),
                    _ if seen.contains(&c) => Err(FrameError::Replayed),
                    _ => Ok(()),
                };
                prop_assert_eq!(accept(&mut w, c), expected.clone());
                if expected.is_ok() {
                    seen.insert(c);
                    highest = Some(highest.map_or(c, |h| h.max(c)));
                }
            }
        }
    }
}
