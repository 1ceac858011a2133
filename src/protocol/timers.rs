//! A small table of named timers for a role: each timer is an index (a role's `enum Timer as usize`)
//! with an optional deadline. A role asks the table which timers expired; a spurious wake-up finds none.

use super::Time;

/// `N` named timers, each either unset or due at a time.
#[derive(Debug, Clone)]
pub struct Timers<const N: usize> {
    deadlines: [Option<Time>; N],
}

impl<const N: usize> Default for Timers<N> {
    fn default() -> Self {
        Timers { deadlines: [None; N] }
    }
}

impl<const N: usize> Timers<N> {
    /// Sets timer `which` to fire at `at`, replacing any earlier setting.
    pub fn set(&mut self, which: usize, at: Time) {
        self.deadlines[which] = Some(at);
    }

    /// Unsets timer `which`.
    pub fn cancel(&mut self, which: usize) {
        self.deadlines[which] = None;
    }

    /// Whether timer `which` is set.
    pub fn is_set(&self, which: usize) -> bool {
        self.deadlines[which].is_some()
    }

    /// When timer `which` fires, if it is set.
    pub fn deadline(&self, which: usize) -> Option<Time> {
        self.deadlines[which]
    }

    /// The earliest deadline of all set timers.
    pub fn next(&self) -> Option<Time> {
        self.deadlines.iter().flatten().copied().min()
    }

    /// Unsets and returns, in index order, every timer due at or before `now`.
    pub fn take_expired(&mut self, now: Time) -> impl Iterator<Item = usize> + '_ {
        self.deadlines.iter_mut().enumerate().filter_map(move |(i, d)| match *d {
            Some(at) if at <= now => {
                *d = None;
                Some(i)
            }
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_timers_fire_once_in_index_order() {
        let mut t = Timers::<3>::default();
        t.set(2, 10);
        t.set(0, 20);
        t.set(1, 5);
        assert_eq!(t.next(), Some(5));
        assert_eq!(t.take_expired(10).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(t.take_expired(10).count(), 0, "a spurious wake-up finds nothing");
        assert_eq!(t.next(), Some(20));
        t.cancel(0);
        assert_eq!(t.next(), None);
    }
}
