//! Where a split's tokens live: in memory (the built-in corpus, tests) or
//! in shard files on disk, read window by window. Loaders only ever ask for
//! a range, so both look the same to them.

use super::shard::ShardFile;
use anyhow::Result;

#[derive(Debug)]
pub enum TokenStore {
    Memory(Vec<u32>),
    /// Shards in order; `starts[i]` is the global index of shard i's first token.
    Shards { files: Vec<ShardFile>, starts: Vec<u64>, len: u64 },
}

impl TokenStore {
    pub fn shards(files: Vec<ShardFile>) -> TokenStore {
        let mut starts = Vec::with_capacity(files.len());
        let mut len = 0;
        for f in &files {
            starts.push(len);
            len += f.count;
        }
        TokenStore::Shards { files, starts, len }
    }

    pub fn len(&self) -> usize {
        match self {
            TokenStore::Memory(v) => v.len(),
            TokenStore::Shards { len, .. } => *len as usize,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends tokens `[start, start + n)` to `out` (a range may span shards).
    pub fn read_into(&self, start: usize, n: usize, out: &mut Vec<u32>) -> Result<()> {
        match self {
            TokenStore::Memory(v) => {
                out.extend_from_slice(&v[start..start + n]);
                Ok(())
            }
            TokenStore::Shards { files, starts, .. } => {
                let (mut pos, end) = (start as u64, (start + n) as u64);
                let mut i = starts.partition_point(|&s| s <= pos) - 1;
                while pos < end {
                    let take = (end - pos).min(starts[i] + files[i].count - pos);
                    files[i].read_into(pos - starts[i], take as usize, out)?;
                    pos += take;
                    i += 1;
                }
                Ok(())
            }
        }
    }

    /// Every token, in memory (for small splits and tests).
    pub fn to_vec(&self) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(self.len());
        self.read_into(0, self.len(), &mut out)?;
        Ok(out)
    }
}
