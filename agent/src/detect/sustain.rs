//! A condition that must hold for a while before it counts, and stay false for a while before
//! it is over — so one noisy sample neither raises nor clears a finding.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Quiet,
    /// Holding, not long enough yet.
    Pending,
    /// Held long enough just now; the value is when it began (ms).
    Onset(u64),
    Ongoing(u64),
    Ended,
}

#[derive(Debug, Default, Clone)]
pub struct Sustain {
    since: Option<u64>,
    false_since: Option<u64>,
    active: bool,
}

impl Sustain {
    pub fn update(&mut self, holds: bool, now_ms: u64, hold_ms: u64, clear_ms: u64) -> Phase {
        if holds {
            self.false_since = None;
            let since = *self.since.get_or_insert(now_ms);
            if self.active {
                return Phase::Ongoing(since);
            }
            if now_ms.saturating_sub(since) >= hold_ms {
                self.active = true;
                return Phase::Onset(since);
            }
            return Phase::Pending;
        }
        if !self.active {
            self.since = None;
            return Phase::Quiet;
        }
        let false_since = *self.false_since.get_or_insert(now_ms);
        if now_ms.saturating_sub(false_since) >= clear_ms {
            *self = Self::default();
            return Phase::Ended;
        }
        // Still counted as the same occurrence while it may come back.
        Phase::Ongoing(self.since.unwrap_or(now_ms))
    }

    pub fn active(&self) -> bool {
        self.active
    }

    /// When the current holding period began.
    pub fn since(&self) -> Option<u64> {
        self.since
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_then_clears_with_hysteresis() {
        let mut s = Sustain::default();
        assert_eq!(s.update(true, 0, 10, 5), Phase::Pending);
        assert_eq!(s.update(false, 4, 10, 5), Phase::Quiet, "broke before 10");
        assert_eq!(s.update(true, 5, 10, 5), Phase::Pending);
        assert_eq!(s.update(true, 15, 10, 5), Phase::Onset(5));
        assert_eq!(s.update(false, 16, 10, 5), Phase::Ongoing(5));
        assert_eq!(s.update(true, 17, 10, 5), Phase::Ongoing(5));
        assert_eq!(s.update(false, 18, 10, 5), Phase::Ongoing(5));
        assert_eq!(s.update(false, 23, 10, 5), Phase::Ended);
        assert!(!s.active());
    }
}
