//! Which blocks of the hotplug region are plugged: one bit per block.

use serde::{Deserialize, Serialize};

use super::request::BlockRange;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockBitmap {
    blocks: u64,
    words: Vec<u64>,
}

impl BlockBitmap {
    /// `blocks` unplugged blocks.
    pub fn new(blocks: u64) -> Self {
        Self {
            blocks,
            words: vec![0; blocks.div_ceil(64) as usize],
        }
    }

    pub fn len(&self) -> u64 {
        self.blocks
    }

    pub fn is_empty(&self) -> bool {
        self.blocks == 0
    }

    /// Whether the saved form is self-consistent (a restored bitmap comes
    /// from a file).
    pub fn is_valid(&self) -> bool {
        self.words.len() as u64 == self.blocks.div_ceil(64)
            && (self.blocks.is_multiple_of(64)
                || self
                    .words
                    .last()
                    .is_none_or(|w| w >> (self.blocks % 64) == 0))
    }

    pub fn is_plugged(&self, block: u64) -> bool {
        block < self.blocks && self.words[(block / 64) as usize] & (1 << (block % 64)) != 0
    }

    /// Number of plugged blocks in `range` (which must be in bounds).
    pub fn plugged_in(&self, range: BlockRange) -> u64 {
        (range.first..range.first + range.count)
            .filter(|&b| self.is_plugged(b))
            .count() as u64
    }

    /// Number of plugged blocks.
    pub fn plugged(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    pub fn set(&mut self, range: BlockRange, plugged: bool) {
        for b in range.first..(range.first + range.count).min(self.blocks) {
            let w = &mut self.words[(b / 64) as usize];
            if plugged {
                *w |= 1 << (b % 64);
            } else {
                *w &= !(1 << (b % 64));
            }
        }
    }

    /// Maximal runs of plugged blocks, in order.
    pub fn plugged_runs(&self) -> Vec<BlockRange> {
        let mut runs = Vec::new();
        let mut start = None;
        for b in 0..=self.blocks {
            match (self.is_plugged(b), start) {
                (true, None) => start = Some(b),
                (false, Some(s)) => {
                    runs.push(BlockRange {
                        first: s,
                        count: b - s,
                    });
                    start = None;
                }
                _ => {}
            }
        }
        runs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_count_and_runs() {
        let mut b = BlockBitmap::new(130);
        assert!(b.is_valid());
        b.set(
            BlockRange {
                first: 60,
                count: 10,
            },
            true,
        );
        b.set(
            BlockRange {
                first: 129,
                count: 1,
            },
            true,
        );
        assert_eq!(b.plugged(), 11);
        assert_eq!(
            b.plugged_in(BlockRange {
                first: 0,
                count: 65
            }),
            5
        );
        b.set(
            BlockRange {
                first: 62,
                count: 2,
            },
            false,
        );
        assert_eq!(
            b.plugged_runs(),
            vec![
                BlockRange {
                    first: 60,
                    count: 2
                },
                BlockRange {
                    first: 64,
                    count: 6
                },
                BlockRange {
                    first: 129,
                    count: 1
                },
            ]
        );
        assert!(!b.is_plugged(130));
        assert!(b.is_valid());
        let mut bad = b.clone();
        bad.words.push(0);
        assert!(!bad.is_valid());
    }
}
