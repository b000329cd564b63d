//! Data: tokenizers, token shard files, `prepare` (text → shards), the
//! built-in demo corpus, and the batch loader (shuffled, data-parallel
//! sharded, resumable).
//!
//! Typical use:
//! ```no_run
//! use ferrotron::data::{Dataset, Loader, Split};
//! let data = Dataset::open("builtin")?;
//! let mut train = Loader::new(&data, Split::Train, 8, 256, 1337, 0, 1)?;
//! let batch = train.next_batch()?; // batch.inputs / batch.targets: 8 * 256 ids
//! # anyhow::Ok(())
//! ```

pub mod builtin;
pub mod dataset;
pub mod hf_tokenizer;
pub mod loader;
pub mod meta;
mod parquet_text;
pub mod prepare;
pub mod shard;
mod sink;
pub mod sources;
pub mod stats;
pub mod store;
pub mod tokenizer;

pub use dataset::{Dataset, Split};
pub use loader::{Batch, Loader, LoaderState};
pub use meta::Meta;
pub use prepare::{prepare, PrepareOptions, PrepareSummary};
pub use shard::{read_shard, write_shard, write_shard_vocab, Dtype, Shard, ShardWriter};
pub use stats::unigram_entropy;
pub use tokenizer::{Tokenizer, TokenizerKind};
