//! Message payloads (JSON or CSV) decoded straight into Arrow batches.
//!
//! One message is one row. A batch of messages is decoded in one pass; if
//! that fails (or yields a different number of rows), the messages are
//! decoded one by one so that only the bad ones are rejected, each with its
//! reason. A rejected message never stops the source: the caller records
//! it (see [`super::malformed`]).
//!
//! JSON: fields by name, unknown fields ignored, missing fields NULL.
//! CSV: fields by position, with a delimiter and optionally a header line
//! at the start of each message, which is skipped.

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::error::ArrowError;

use super::Options;
use crate::error::{ExecutorError, Result};

/// How payloads are encoded (`ENCODE JSON | CSV`).
#[derive(Debug, Clone, PartialEq)]
pub enum Encoding {
    /// One JSON object per message.
    Json,
    /// One CSV record per message.
    Csv {
        /// Field delimiter.
        delimiter: u8,
        /// Whether each message starts with a header line.
        header: bool,
    },
}

impl Encoding {
    /// The encoding `options` name (`encode`, `csv.delimiter`, `csv.header`).
    pub fn from_options(options: &mut Options) -> Result<Self> {
        let encode = options.take("encode").unwrap_or_else(|| "json".into());
        match encode.to_ascii_lowercase().as_str() {
            "json" => Ok(Encoding::Json),
            "csv" => {
                let delimiter = match options.take("csv.delimiter").as_deref() {
                    None => b',',
                    Some("\\t") => b'\t',
                    Some(d) if d.len() == 1 => d.as_bytes()[0],
                    Some(d) => {
                        return Err(ExecutorError::InvalidOption(format!(
                            "csv.delimiter must be one character, got '{d}'"
                        )));
                    }
                };
                let header = match options.take("csv.header").as_deref() {
                    None | Some("false") => false,
                    Some("true") => true,
                    Some(other) => {
                        return Err(ExecutorError::InvalidOption(format!(
                            "csv.header must be true or false, got '{other}'"
                        )));
                    }
                };
                Ok(Encoding::Csv { delimiter, header })
            }
            other => Err(ExecutorError::Unsupported(format!(
                "ENCODE {} (supported: JSON, CSV)",
                other.to_uppercase()
            ))),
        }
    }
}

/// Rows decoded from a batch of messages.
#[derive(Debug)]
pub struct Decoded {
    /// One row per kept message, in order.
    pub batch: RecordBatch,
    /// Index of each kept message.
    pub kept: Vec<usize>,
    /// Rejected messages: index and reason.
    pub rejected: Vec<(usize, String)>,
}

/// Decodes payloads into rows of one schema.
#[derive(Debug, Clone)]
pub struct PayloadDecoder {
    schema: SchemaRef,
    encoding: Encoding,
}

impl PayloadDecoder {
    /// A decoder of `encoding` payloads into `schema` rows.
    pub fn new(schema: SchemaRef, encoding: Encoding) -> Self {
        Self { schema, encoding }
    }

    /// Decodes `payloads` (`None` = a message without a value).
    pub fn decode(&self, payloads: &[Option<&[u8]>]) -> Result<Decoded> {
        let all_present = payloads.iter().all(|p| p.is_some_and(|p| !p.is_empty()));
        if all_present
            && let Ok(batch) = self.decode_all(payloads.iter().flatten().copied())
            && batch.num_rows() == payloads.len()
        {
            return Ok(Decoded {
                batch,
                kept: (0..payloads.len()).collect(),
                rejected: vec![],
            });
        }
        let mut batches = Vec::with_capacity(payloads.len());
        let mut kept = Vec::with_capacity(payloads.len());
        let mut rejected = Vec::new();
        for (index, payload) in payloads.iter().enumerate() {
            let outcome = match payload {
                None => Err("the message has no value".to_string()),
                Some([]) => Err("the message is empty".to_string()),
                Some(p) => match self.decode_all(std::iter::once(*p)) {
                    Ok(batch) if batch.num_rows() == 1 => Ok(batch),
                    Ok(batch) => Err(format!(
                        "expected one record per message, found {}",
                        batch.num_rows()
                    )),
                    Err(e) => Err(e.to_string()),
                },
            };
            match outcome {
                Ok(batch) => {
                    batches.push(batch);
                    kept.push(index);
                }
                Err(reason) => rejected.push((index, reason)),
            }
        }
        Ok(Decoded {
            batch: concat_batches(&self.schema, &batches)?,
            kept,
            rejected,
        })
    }

    /// Decodes every payload in one pass.
    fn decode_all<'a>(
        &self,
        payloads: impl Iterator<Item = &'a [u8]>,
    ) -> std::result::Result<RecordBatch, ArrowError> {
        let mut buffer = Vec::new();
        let mut count = 0;
        for payload in payloads {
            let record = match self.encoding {
                Encoding::Csv { header: true, .. } => {
                    match payload.iter().position(|&b| b == b'\n') {
                        Some(end) => &payload[end + 1..],
                        None => &[],
                    }
                }
                _ => payload,
            };
            buffer.extend_from_slice(record);
            if buffer.last() != Some(&b'\n') {
                buffer.push(b'\n');
            }
            count += 1;
        }
        // One more than the messages, so an extra record shows as a wrong count.
        let capacity = count + 1;
        let mut decoded = match self.encoding {
            Encoding::Json => {
                let mut decoder = datafusion::arrow::json::ReaderBuilder::new(self.schema.clone())
                    .with_batch_size(capacity)
                    .build_decoder()?;
                feed(&buffer, |b| decoder.decode(b))?;
                decoder.flush()?
            }
            Encoding::Csv { delimiter, .. } => {
                let mut decoder = datafusion::arrow::csv::ReaderBuilder::new(self.schema.clone())
                    .with_header(false)
                    .with_delimiter(delimiter)
                    .with_batch_size(capacity)
                    .build_decoder();
                feed(&buffer, |b| decoder.decode(b))?;
                decoder.flush()?
            }
        };
        Ok(decoded
            .take()
            .unwrap_or_else(|| RecordBatch::new_empty(self.schema.clone())))
    }
}

/// Feeds `buffer` to a decoder until it is consumed (or the decoder is full).
fn feed(
    mut buffer: &[u8],
    mut decode: impl FnMut(&[u8]) -> std::result::Result<usize, ArrowError>,
) -> std::result::Result<(), ArrowError> {
    while !buffer.is_empty() {
        let read = decode(buffer)?;
        if read == 0 {
            break;
        }
        buffer = &buffer[read..];
    }
    Ok(())
}
