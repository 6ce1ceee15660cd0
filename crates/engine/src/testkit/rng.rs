//! Where the simulator's choices come from.

/// A source of choices. `below(n)` is in `0..n`; choice 0 is always the
/// plain, terminating one (advance the first attempt, exit 0), so a
/// [`Script`] that runs dry finishes any workflow.
pub trait Choices {
    fn below(&mut self, n: u32) -> u32;

    /// True with probability `per_mille`/1000.
    fn chance(&mut self, per_mille: u32) -> bool {
        // Reversed so that choice 0 means "no".
        self.below(1000) >= 1000 - per_mille.min(1000)
    }
}

/// SplitMix64: small, fast, reproducible from its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

impl Choices for Rng {
    fn below(&mut self, n: u32) -> u32 {
        if n == 0 {
            return 0;
        }
        (((self.next_u64() >> 32) * u64::from(n)) >> 32) as u32
    }
}

/// Choices read from a list (proptest generates and shrinks it); 0 once it is used up.
#[derive(Debug, Clone, Default)]
pub struct Script {
    data: Vec<u32>,
    pos: usize,
}

impl Script {
    pub fn new(data: Vec<u32>) -> Script {
        Script { data, pos: 0 }
    }
}

impl Choices for Script {
    fn below(&mut self, n: u32) -> u32 {
        let value = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        if n == 0 { 0 } else { value % n }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_reproducible_and_in_range() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        let mut seen = [false; 10];
        for _ in 0..1000 {
            let x = a.below(10);
            assert_eq!(x, b.below(10));
            seen[x as usize] = true;
        }
        assert!(seen.iter().all(|s| *s));
    }

    #[test]
    fn script_runs_dry_to_zero() {
        let mut s = Script::new(vec![5, 13]);
        assert_eq!(s.below(10), 5);
        assert_eq!(s.below(10), 3);
        assert_eq!(s.below(10), 0);
        assert!(!s.chance(999));
    }
}
