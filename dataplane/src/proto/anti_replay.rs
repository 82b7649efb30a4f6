//! The anti-replay window (RFC 6479 style): a ring of 64-bit words, one bit per counter, so a
//! check and an update are O(1) whatever the window size. Counters are checked before the
//! tag is verified (cheap drop of obvious replays) and marked only after it verified.

/// Bits per word.
const WORD: u64 = 64;
/// Words in the ring: room for the largest window (4096) plus one word of slack, rounded up
/// to a power of two.
const WORDS: usize = 128;
const RING_BITS: u64 = WORDS as u64 * WORD;

/// Why a counter was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replay {
    /// Older than the window.
    TooOld,
    /// Seen before.
    Duplicate,
}

/// A sliding window over received counters.
#[derive(Clone, Debug)]
pub struct ReplayWindow {
    bitmap: [u64; WORDS],
    /// Highest counter accepted so far (+1, so 0 means none yet).
    next: u64,
    window: u64,
}

impl ReplayWindow {
    /// A window of `size` counters (2048..=4096, as the config allows).
    pub fn new(size: u32) -> Self {
        let window = u64::from(size).clamp(64, RING_BITS - WORD);
        Self {
            bitmap: [0; WORDS],
            next: 0,
            window,
        }
    }

    /// Whether `counter` could be new (without recording it).
    pub fn check(&self, counter: u64) -> Result<(), Replay> {
        if counter >= self.next {
            return Ok(());
        }
        if self.next - counter > self.window {
            return Err(Replay::TooOld);
        }
        let bit = counter % RING_BITS;
        let word = usize::try_from(bit / WORD).unwrap_or(0);
        if self.bitmap[word] & (1 << (bit % WORD)) != 0 {
            return Err(Replay::Duplicate);
        }
        Ok(())
    }

    /// Records `counter` as received (after its tag verified).
    pub fn accept(&mut self, counter: u64) -> Result<(), Replay> {
        self.check(counter)?;
        if counter >= self.next {
            // Clear the words the window slides over.
            let old_word = self.next.saturating_sub(1) / WORD;
            let new_word = counter / WORD;
            let steps = (new_word - old_word).min(WORDS as u64);
            for i in 1..=steps {
                let w = usize::try_from((old_word + i) % WORDS as u64).unwrap_or(0);
                self.bitmap[w] = 0;
            }
            if self.next == 0 {
                self.bitmap = [0; WORDS];
            }
            self.next = counter + 1;
        }
        let bit = counter % RING_BITS;
        let word = usize::try_from(bit / WORD).unwrap_or(0);
        self.bitmap[word] |= 1 << (bit % WORD);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_and_duplicates() {
        let mut w = ReplayWindow::new(2048);
        for c in 0..5000 {
            assert_eq!(w.accept(c), Ok(()));
            assert_eq!(w.accept(c), Err(Replay::Duplicate), "{c}");
        }
    }

    #[test]
    fn window_edges() {
        let mut w = ReplayWindow::new(2048);
        w.accept(10_000).unwrap();
        // The oldest counter still inside the window, and the first one outside it.
        assert_eq!(w.check(10_001 - 2048), Ok(()));
        assert_eq!(w.check(10_000 - 2048), Err(Replay::TooOld));
        assert_eq!(w.accept(10_001 - 2048), Ok(()));
        assert_eq!(w.accept(10_001 - 2048), Err(Replay::Duplicate));
        // Very old.
        assert_eq!(w.check(0), Err(Replay::TooOld));
        // Out of order inside the window.
        assert_eq!(w.accept(9_999), Ok(()));
        assert_eq!(w.accept(9_999), Err(Replay::Duplicate));
    }

    #[test]
    fn far_future_jump_clears_the_ring() {
        let mut w = ReplayWindow::new(4096);
        for c in 0..100 {
            w.accept(c).unwrap();
        }
        let far = 1 << 40;
        w.accept(far).unwrap();
        // Counters that alias old bits in the ring are fresh, not duplicates.
        for c in (far - 4000)..far {
            assert_eq!(w.check(c), Ok(()), "{c}");
        }
        assert_eq!(w.check(far - 4097), Err(Replay::TooOld));
        assert_eq!(w.accept(far), Err(Replay::Duplicate));
    }

    #[test]
    fn counter_zero_is_valid_once() {
        let mut w = ReplayWindow::new(2048);
        assert_eq!(w.accept(0), Ok(()));
        assert_eq!(w.accept(0), Err(Replay::Duplicate));
    }

    #[test]
    fn sliding_by_less_than_a_word_keeps_bits() {
        let mut w = ReplayWindow::new(2048);
        w.accept(100).unwrap();
        w.accept(130).unwrap();
        assert_eq!(w.accept(100), Err(Replay::Duplicate));
        assert_eq!(w.accept(101), Ok(()));
    }
}
