//! The `datagen` connector: one generator per column.
//!
//! Per column `c` (`fields.c.kind` = `sequence` | `random`, default random):
//! - numbers: `sequence` counts from `fields.c.start` (default 1) to
//!   `fields.c.end` (the source ends there); `random` draws from
//!   [`fields.c.min`, `fields.c.max`] (default 0..=1000);
//! - text: `sequence` is the row number as text; `random` is `fields.c.length`
//!   (default 10) letters and digits;
//! - booleans: random;
//! - timestamps: `sequence` starts at `fields.c.start` (a timestamp; when
//!   unset, [`pin_defaults`] fills in the source's creation time) and
//!   advances `fields.c.step` (an interval, default 1 second) per row;
//!   `random` lies within `fields.c.max_past` (default 1 hour) before that
//!   start.
//!
//! `datagen.rows.total` bounds the source. Random values are a pure function
//! of (`fields.c.seed`, column, row number), so every split layout and every
//! replay yields the same rows.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampNanosecondArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::compute::kernels::cast_utils::string_to_timestamp_nanos;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::temporal_conversions::timestamp_ns_to_datetime;

use super::{BatchGenerator, Options};
use crate::error::{ExecutorError, Result};

#[derive(Debug, Clone)]
enum Generator {
    Sequence { start: i64 },
    RandomInt { min: i64, max: i64 },
    RandomFloat { min: f64, max: f64 },
    Text { length: usize },
    SequenceText,
    Bool,
    TimeSequence { start: i64, step: i64 },
    TimeRandom { start: i64, max_past: i64 },
}

#[derive(Debug, Clone)]
struct ColumnGen {
    generator: Generator,
    seed: u64,
    data_type: DataType,
}

/// A validated `datagen` source definition.
#[derive(Debug, Clone)]
pub struct DatagenSource {
    columns: Vec<ColumnGen>,
    schema: SchemaRef,
    total: Option<u64>,
}

/// Longest random text a column may ask for.
const MAX_TEXT_LENGTH: usize = 1 << 20;

fn interval_nanos(text: &str, key: &str) -> Result<i64> {
    eddy_planner::interval_text_nanos(text)
        .map_err(|e| ExecutorError::InvalidOption(format!("{key}: {e}")))
}

fn is_time(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Timestamp(..) | DataType::Date32 | DataType::Date64
    )
}

/// Adds `fields.<c>.start` = `now_nanos` for every time column without one,
/// so the stored definition generates the same rows on every replay.
pub fn pin_defaults(schema: &SchemaRef, options: &mut Vec<(String, String)>, now_nanos: i64) {
    let Some(now) = timestamp_ns_to_datetime(now_nanos) else {
        return;
    };
    for field in schema.fields().iter().filter(|f| is_time(f.data_type())) {
        let key = format!("fields.{}.start", field.name());
        if !options.iter().any(|(k, _)| *k == key) {
            options.push((key, now.to_string()));
        }
    }
}

impl DatagenSource {
    /// Checks `options` against the declared `schema`.
    pub fn new(schema: SchemaRef, options: &mut Options) -> Result<Self> {
        let mut columns = Vec::new();
        let mut total: Option<u64> = options.number("datagen.rows.total")?;
        for (i, field) in schema.fields().iter().enumerate() {
            let key = |k: &str| format!("fields.{}.{k}", field.name());
            let kind = options
                .take(&key("kind"))
                .unwrap_or_else(|| "random".into());
            let sequence = match kind.as_str() {
                "sequence" => true,
                "random" => false,
                other => {
                    return Err(ExecutorError::InvalidOption(format!(
                        "{} must be sequence or random, got '{other}'",
                        key("kind")
                    )));
                }
            };
            let seed = options.number::<u64>(&key("seed"))?.unwrap_or(i as u64);
            let generator = match field.data_type() {
                t if t.is_integer() || t.is_floating() || matches!(t, DataType::Decimal128(..)) => {
                    if sequence {
                        let start = options.number(&key("start"))?.unwrap_or(1);
                        let end: Option<i64> = options.number(&key("end"))?;
                        if let Some(end) = end {
                            if end < start {
                                return Err(ExecutorError::InvalidOption(format!(
                                    "{} must not be below {}",
                                    key("end"),
                                    key("start")
                                )));
                            }
                            let rows = (i128::from(end) - i128::from(start) + 1) as u64;
                            total = Some(total.map_or(rows, |t| t.min(rows)));
                        }
                        Generator::Sequence { start }
                    } else if t.is_integer() {
                        let min = options.number(&key("min"))?.unwrap_or(0);
                        let max = options.number(&key("max"))?.unwrap_or(1000);
                        if max < min {
                            return Err(ExecutorError::InvalidOption(format!(
                                "{} must not be below {}",
                                key("max"),
                                key("min")
                            )));
                        }
                        Generator::RandomInt { min, max }
                    } else {
                        let min = options.number(&key("min"))?.unwrap_or(0.0);
                        let max = options.number(&key("max"))?.unwrap_or(1000.0);
                        Generator::RandomFloat { min, max }
                    }
                }
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                    if sequence {
                        Generator::SequenceText
                    } else {
                        let length = options.number(&key("length"))?.unwrap_or(10);
                        if length > MAX_TEXT_LENGTH {
                            return Err(ExecutorError::InvalidOption(format!(
                                "{} must be at most {MAX_TEXT_LENGTH}",
                                key("length")
                            )));
                        }
                        Generator::Text { length }
                    }
                }
                DataType::Boolean => Generator::Bool,
                t if is_time(t) => {
                    let start = match options.take(&key("start")) {
                        Some(s) => string_to_timestamp_nanos(&s).map_err(|e| {
                            ExecutorError::InvalidOption(format!("{}: {e}", key("start")))
                        })?,
                        None => 0,
                    };
                    if sequence {
                        let step = match options.take(&key("step")) {
                            Some(s) => interval_nanos(&s, &key("step"))?,
                            None => 1_000_000_000,
                        };
                        Generator::TimeSequence { start, step }
                    } else {
                        let max_past = match options.take(&key("max_past")) {
                            Some(s) => interval_nanos(&s, &key("max_past"))?,
                            None => 3_600_000_000_000,
                        };
                        if max_past < 0 {
                            return Err(ExecutorError::InvalidOption(format!(
                                "{} must not be negative",
                                key("max_past")
                            )));
                        }
                        Generator::TimeRandom { start, max_past }
                    }
                }
                other => {
                    return Err(ExecutorError::InvalidOption(format!(
                        "datagen cannot generate column \"{}\" of type {other}",
                        field.name()
                    )));
                }
            };
            columns.push(ColumnGen {
                generator,
                seed,
                data_type: field.data_type().clone(),
            });
        }
        Ok(Self {
            columns,
            schema,
            total,
        })
    }

    /// Split `index` of `count`, from its row `start` on.
    pub fn split(&self, index: usize, count: usize, start: u64) -> Box<dyn BatchGenerator> {
        Box::new(DatagenSplit {
            source: self.clone(),
            next: index as u64 + start * count as u64,
            step: count as u64,
        })
    }

    /// Whether the source ends.
    pub fn is_bounded(&self) -> bool {
        self.total.is_some()
    }
}

/// A 64-bit mix of the seed, column and row (splitmix64's finaliser).
fn mix(seed: u64, column: usize, row: u64) -> u64 {
    let mut z = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add((column as u64) << 32)
        .wrapping_add(row)
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

struct DatagenSplit {
    source: DatagenSource,
    next: u64,
    step: u64,
}

const ALPHANUMERIC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

fn generate(c: &ColumnGen, column: usize, rows: &[u64]) -> ArrayRef {
    let r = |row: u64| mix(c.seed, column, row);
    match &c.generator {
        Generator::Sequence { start, .. } => Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|&i| start.wrapping_add(i as i64)),
        )),
        Generator::RandomInt { min, max } => {
            // Values in [min, max]; the full i64 range has no modulus.
            let span = max.wrapping_sub(*min) as u64;
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|&i| {
                let offset = match span.checked_add(1) {
                    Some(n) => r(i) % n,
                    None => r(i),
                };
                min.wrapping_add(offset as i64)
            })))
        }
        Generator::RandomFloat { min, max } => {
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|&i| {
                min + (r(i) >> 11) as f64 / (1u64 << 53) as f64 * (max - min)
            })))
        }
        Generator::Text { length } => {
            Arc::new(StringArray::from_iter_values(rows.iter().map(|&i| {
                (0..*length)
                    .map(|k| {
                        let x = mix(c.seed, column, i.wrapping_mul(131).wrapping_add(k as u64));
                        ALPHANUMERIC[(x % ALPHANUMERIC.len() as u64) as usize] as char
                    })
                    .collect::<String>()
            })))
        }
        Generator::SequenceText => Arc::new(StringArray::from_iter_values(
            rows.iter().map(|i| (i + 1).to_string()),
        )),
        Generator::Bool => Arc::new(BooleanArray::from_iter(
            rows.iter().map(|&i| Some(r(i) & 1 == 1)),
        )),
        Generator::TimeSequence { start, step } => {
            Arc::new(TimestampNanosecondArray::from_iter_values(
                rows.iter()
                    .map(|&i| start.wrapping_add(step.wrapping_mul(i as i64))),
            ))
        }
        Generator::TimeRandom { start, max_past } => {
            Arc::new(TimestampNanosecondArray::from_iter_values(
                rows.iter()
                    .map(|&i| start - (r(i) % (*max_past as u64 + 1)) as i64),
            ))
        }
    }
}

impl BatchGenerator for DatagenSplit {
    fn next_batch(&mut self, max: usize) -> Result<Option<RecordBatch>> {
        let mut rows = Vec::with_capacity(max);
        while rows.len() < max && self.source.total.is_none_or(|t| self.next < t) {
            rows.push(self.next);
            self.next += self.step;
        }
        if rows.is_empty() {
            return Ok(None);
        }
        let arrays = self
            .source
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let array = generate(c, i, &rows);
                if array.data_type() == &c.data_type {
                    Ok(array)
                } else {
                    Ok(cast(&array, &c.data_type)?)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(RecordBatch::try_new(
            self.source.schema.clone(),
            arrays,
        )?))
    }
}
