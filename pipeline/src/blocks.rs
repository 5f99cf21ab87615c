//! Execution blocks: the model's layers cut into B contiguous runs.
//!
//! Block i holds layers [⌊i·L/B⌋, ⌊(i+1)·L/B⌋), so sizes differ by at most one. Block 0 also
//! holds the token embedding, block B−1 the final norm and the LM head.

use crate::error::{PipelineError, Result};
use std::ops::Range;

/// λScale's choice, and the default everywhere a block count is not given.
pub const DEFAULT_NUM_BLOCKS: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockLayout {
    pub num_blocks: usize,
    pub num_layers: usize,
}

impl BlockLayout {
    pub fn new(num_layers: usize, num_blocks: usize) -> Result<Self> {
        if num_blocks == 0 || num_blocks > num_layers {
            return Err(PipelineError::Invalid {
                what: "block count",
                msg: format!("{num_blocks} blocks for {num_layers} layers; need 1 ..= {num_layers}"),
            });
        }
        Ok(BlockLayout { num_blocks, num_layers })
    }

    /// `min(DEFAULT_NUM_BLOCKS, num_layers)` blocks.
    pub fn default_for(num_layers: usize) -> Result<Self> {
        Self::new(num_layers, DEFAULT_NUM_BLOCKS.min(num_layers.max(1)))
    }

    pub fn block_layers(&self, block: usize) -> Range<usize> {
        (block * self.num_layers / self.num_blocks)..((block + 1) * self.num_layers / self.num_blocks)
    }

    /// The layers of blocks [a, b), checked to be a non-empty range inside the model.
    pub fn layer_range(&self, blocks: Range<usize>) -> Result<Range<usize>> {
        if blocks.start >= blocks.end || blocks.end > self.num_blocks {
            return Err(PipelineError::Invalid {
                what: "block range",
                msg: format!(
                    "[{}, {}) is not a non-empty range of the {} blocks",
                    blocks.start, blocks.end, self.num_blocks
                ),
            });
        }
        Ok(self.block_layers(blocks.start).start..self.block_layers(blocks.end - 1).end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_cover_layers_once_and_balance() {
        for layers in 1..40 {
            for blocks in 1..=layers {
                let l = BlockLayout::new(layers, blocks).unwrap();
                let mut next = 0;
                for b in 0..blocks {
                    let r = l.block_layers(b);
                    assert_eq!(r.start, next);
                    assert!(r.len() == layers / blocks || r.len() == layers / blocks + 1);
                    next = r.end;
                }
                assert_eq!(next, layers);
                assert_eq!(l.layer_range(0..blocks).unwrap(), 0..layers);
            }
        }
        assert!(BlockLayout::new(4, 5).is_err());
        assert!(BlockLayout::new(4, 0).is_err());
        assert!(BlockLayout::new(8, 8).unwrap().layer_range(3..3).is_err());
        assert!(BlockLayout::new(8, 8).unwrap().layer_range(3..9).is_err());
    }
}
