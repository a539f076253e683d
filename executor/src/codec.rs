//! Rows as bytes: Arrow's row format, used for state keys and stored rows.
//!
//! The row format is order-preserving (byte order = value order, NULLs
//! first), so a `BTreeMap` keyed by encoded values is sorted by value, and
//! equal values have equal bytes.

use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::json::writer::{LineDelimited, WriterBuilder};
use datafusion::arrow::row::{RowConverter, RowParser, Rows, SortField};

use crate::checkpoint::{push_part, split_part};
use crate::error::{ExecutorError, Result};
use crate::message::{Op, StreamChunk};

/// Encodes and decodes rows of fixed column types.
#[derive(Debug)]
pub struct RowCodec {
    converter: RowConverter,
    parser: RowParser,
    types: Vec<DataType>,
}

impl RowCodec {
    /// A codec for columns of `types`.
    pub fn new(types: Vec<DataType>) -> Result<Self> {
        let converter = RowConverter::new(types.iter().cloned().map(SortField::new).collect())?;
        let parser = converter.parser();
        Ok(Self {
            converter,
            parser,
            types,
        })
    }

    /// A codec for every column of `schema`.
    pub fn for_schema(schema: &SchemaRef) -> Result<Self> {
        Self::new(
            schema
                .fields()
                .iter()
                .map(|f| f.data_type().clone())
                .collect(),
        )
    }

    /// Column types.
    pub fn types(&self) -> &[DataType] {
        &self.types
    }

    /// Encodes `columns` (all of one length) row by row.
    pub fn encode(&self, columns: &[ArrayRef]) -> Result<Rows> {
        Ok(self.converter.convert_columns(columns)?)
    }

    /// Decodes encoded rows back into columns.
    pub fn decode<'a>(&self, rows: impl IntoIterator<Item = &'a [u8]>) -> Result<Vec<ArrayRef>> {
        let rows = rows.into_iter().map(|r| self.parser.parse(r));
        Ok(self.converter.convert_rows(rows)?)
    }

    /// The bytes of a row whose every column is NULL.
    pub fn null_row(&self) -> Result<Box<[u8]>> {
        let nulls: Vec<ArrayRef> = self
            .types
            .iter()
            .map(|t| datafusion::arrow::array::new_null_array(t, 1))
            .collect();
        Ok(self.encode(&nulls)?.row(0).as_ref().into())
    }
}

/// Encodes a changelog chunk as bytes: per row, its op and its row as
/// `codec` (a codec for the chunk's columns) encodes it.
pub fn encode_change(codec: &RowCodec, chunk: &StreamChunk) -> Result<Vec<u8>> {
    let rows = codec.encode(chunk.batch.columns())?;
    let mut out = Vec::new();
    for (row, op) in rows.iter().zip(chunk.ops.iter()) {
        out.push(matches!(op, Op::Insert) as u8);
        push_part(&mut out, row.data());
    }
    Ok(out)
}

/// Decodes what [`encode_change`] wrote, as rows of `schema` (`codec` its codec).
pub fn decode_change(schema: &SchemaRef, codec: &RowCodec, bytes: &[u8]) -> Result<StreamChunk> {
    let mut ops = Vec::new();
    let mut rows: Vec<&[u8]> = Vec::new();
    let mut rest = bytes;
    while let Some((&op, tail)) = rest.split_first() {
        let (row, tail) = split_part(tail)?;
        ops.push(if op == 1 { Op::Insert } else { Op::Delete });
        rows.push(row);
        rest = tail;
    }
    let batch = RecordBatch::try_new(schema.clone(), codec.decode(rows)?)?;
    Ok(StreamChunk {
        batch,
        ops: ops.into(),
    })
}

/// One JSON object per row of `batch`.
pub(crate) fn json_rows(batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
    let mut writer = WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, LineDelimited>(Vec::new());
    writer.write(batch)?;
    writer.finish()?;
    let bytes = writer.into_inner();
    let rows: Vec<Vec<u8>> = bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    if rows.len() != batch.num_rows() {
        return Err(ExecutorError::Internal(format!(
            "{} rows encoded as {} JSON lines",
            batch.num_rows(),
            rows.len()
        )));
    }
    Ok(rows)
}
