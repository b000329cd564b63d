//! Reading one text column out of a Parquet file (e.g. a Hugging Face dataset
//! shard), with the parquet crate's row API and no Arrow.
//!
//! Only the text column is decoded (a projection), row group by row group, so
//! memory stays at one row group's worth of that column.

use super::sources::Emit;
use anyhow::{anyhow, bail, Result};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use parquet::schema::types::Type;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

/// Emits the non-null values of column `column`, one document per row.
pub fn read(path: &Path, column: &str, emit: &mut Emit) -> Result<()> {
    let file = File::open(path).map_err(|e| anyhow!("cannot read {}: {e}", path.display()))?;
    let reader = SerializedFileReader::new(file)
        .map_err(|e| anyhow!("{} is not a readable Parquet file: {e}", path.display()))?;
    let projection = projection(&reader, column).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    for g in 0..reader.num_row_groups() {
        read_row_group(&reader, g, &projection, emit)
            .map_err(|e| anyhow!("{} (row group {g}): {e}{}", path.display(), codec_hint(&e)))?;
    }
    Ok(())
}

fn read_row_group(
    reader: &SerializedFileReader<File>,
    g: usize,
    projection: &Type,
    emit: &mut Emit,
) -> Result<()> {
    let group = reader.get_row_group(g)?;
    let rows = group.metadata().num_rows().max(1) as u64;
    let bytes_per_row = group.metadata().compressed_size().max(0) as u64 / rows;
    for row in group.get_row_iter(Some(projection.clone()))? {
        let row = row?;
        let Some((_, field)) = row.get_column_iter().next() else {
            continue;
        };
        match field {
            Field::Str(s) if !s.is_empty() => emit(s.clone(), bytes_per_row)?,
            Field::Bytes(b) if !b.data().is_empty() => emit(
                String::from_utf8_lossy(b.data()).into_owned(),
                bytes_per_row,
            )?,
            Field::Str(_) | Field::Bytes(_) | Field::Null => {}
            other => bail!("the text column holds {other:?}, not strings"),
        }
    }
    Ok(())
}

/// A schema with only the requested top-level column.
fn projection(reader: &SerializedFileReader<File>, column: &str) -> Result<Type> {
    let schema = reader.metadata().file_metadata().schema();
    let fields = schema.get_fields();
    let Some(field) = fields.iter().find(|f| f.name() == column) else {
        let names: Vec<&str> = fields.iter().map(|f| f.name()).collect();
        bail!(
            "no column `{column}` (columns: {}); choose the text column option",
            names.join(", ")
        );
    };
    if !field.is_primitive() || field.get_physical_type() != parquet::basic::Type::BYTE_ARRAY {
        bail!("column `{column}` is not a text (string) column");
    }
    Ok(Type::group_type_builder(schema.name())
        .with_fields(vec![Arc::clone(field)])
        .build()?)
}

/// Explains errors from compression codecs this build leaves out.
fn codec_hint(e: &anyhow::Error) -> &'static str {
    if format!("{e}").contains("feature") {
        "; this build reads uncompressed, Snappy, gzip and LZ4 Parquet files (Zstd only when built \
         with `--features parquet-zstd`): rebuild, or re-save the file with Snappy"
    } else {
        ""
    }
}
