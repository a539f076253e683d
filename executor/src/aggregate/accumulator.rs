//! Retractable accumulators: every aggregate state supports both adding and
//! removing a value, so deletes are exact.
//!
//! | function                         | state                                   |
//! |----------------------------------|-----------------------------------------|
//! | count                            | number of non-NULL values               |
//! | sum / avg                        | exact sum (i128 for ints and decimals) and count |
//! | bool_and / bool_or               | counts of true and false                |
//! | min / max / string_agg / DISTINCT| multiset of encoded values, sorted      |
//!
//! The multiset is what makes deleting the current minimum find the next one.

use std::collections::BTreeMap;

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, Decimal128Array, Float64Array, Int64Array,
};
use datafusion::arrow::datatypes::DataType;
use datafusion::scalar::ScalarValue;

use eddy_planner::AggregateKind;

use crate::checkpoint::{ValueReader, ValueWriter};
use crate::codec::RowCodec;
use crate::error::{ExecutorError, Result};

/// How argument values are accumulated, fixed per call at plan time.
#[derive(Debug, Clone, PartialEq)]
pub enum ValueKind {
    /// Counted only.
    Counted,
    /// Summed as i64 (integer inputs).
    Int,
    /// Summed as f64.
    Float,
    /// Summed as i128 at `scale`.
    Decimal { scale: i8 },
    /// Counted by truth value.
    Bool,
    /// Kept as a multiset of encoded values.
    Multiset,
}

impl ValueKind {
    /// The accumulation kind for `kind` over values of `input`, and the type
    /// the argument is cast to before accumulating.
    pub fn for_call(
        kind: AggregateKind,
        distinct: bool,
        input: &DataType,
    ) -> Result<(Self, DataType)> {
        use AggregateKind::*;
        Ok(match kind {
            Count if !distinct => (ValueKind::Counted, input.clone()),
            Min | Max | StringAgg | Count => (ValueKind::Multiset, input.clone()),
            Sum | Avg if distinct => {
                return Err(ExecutorError::Unsupported(
                    "sum(DISTINCT ...) and avg(DISTINCT ...) in a materialized view".into(),
                ));
            }
            Sum | Avg => match input {
                DataType::Decimal128(_, s) | DataType::Decimal256(_, s) => (
                    ValueKind::Decimal { scale: *s },
                    DataType::Decimal128(38, *s),
                ),
                DataType::Float16 | DataType::Float32 | DataType::Float64 => {
                    (ValueKind::Float, DataType::Float64)
                }
                t if t.is_integer() || t.is_null() => (ValueKind::Int, DataType::Int64),
                other => {
                    return Err(ExecutorError::Unsupported(format!("{kind:?} over {other}")));
                }
            },
            BoolAnd | BoolOr => (ValueKind::Bool, DataType::Boolean),
        })
    }
}

/// The state of one aggregate call in one group.
#[derive(Debug, Clone)]
pub enum Accumulator {
    /// Non-NULL count.
    Count(i64),
    /// Integer sum and count.
    Int { sum: i128, n: i64 },
    /// Float sum and count.
    Float { sum: f64, n: i64 },
    /// Decimal sum (unscaled) and count.
    Decimal { sum: i128, n: i64 },
    /// Truth counts.
    Bool { trues: i64, falses: i64 },
    /// Encoded value -> multiplicity.
    Multiset(BTreeMap<Box<[u8]>, i64>),
}

impl Accumulator {
    /// A fresh accumulator for `kind`.
    pub fn new(kind: &ValueKind) -> Self {
        match kind {
            ValueKind::Counted => Self::Count(0),
            ValueKind::Int => Self::Int { sum: 0, n: 0 },
            ValueKind::Float => Self::Float { sum: 0.0, n: 0 },
            ValueKind::Decimal { .. } => Self::Decimal { sum: 0, n: 0 },
            ValueKind::Bool => Self::Bool {
                trues: 0,
                falses: 0,
            },
            ValueKind::Multiset => Self::Multiset(BTreeMap::new()),
        }
    }

    /// Adds (`sign` = 1) or removes (`sign` = -1) row `i` of `values`
    /// (`encoded` holds the row's encoded value for multisets). NULLs are skipped.
    pub fn update(&mut self, sign: i64, values: &ArrayRef, i: usize, encoded: Option<&[u8]>) {
        if values.is_null(i) {
            return;
        }
        match self {
            Self::Count(n) => *n += sign,
            Self::Int { sum, n } => {
                if let Some(a) = values.as_any().downcast_ref::<Int64Array>() {
                    *sum += sign as i128 * a.value(i) as i128;
                    *n += sign;
                }
            }
            Self::Float { sum, n } => {
                if let Some(a) = values.as_any().downcast_ref::<Float64Array>() {
                    *sum += sign as f64 * a.value(i);
                    *n += sign;
                }
            }
            Self::Decimal { sum, n } => {
                if let Some(a) = values.as_any().downcast_ref::<Decimal128Array>() {
                    *sum += sign as i128 * a.value(i);
                    *n += sign;
                }
            }
            Self::Bool { trues, falses } => {
                if let Some(a) = values.as_any().downcast_ref::<BooleanArray>() {
                    if a.value(i) {
                        *trues += sign
                    } else {
                        *falses += sign
                    }
                }
            }
            Self::Multiset(set) => {
                if let Some(key) = encoded {
                    let n = set.entry(key.into()).or_insert(0);
                    *n += sign;
                    if *n == 0 {
                        set.remove(key);
                    }
                }
            }
        }
    }

    /// Writes this state to a checkpoint value.
    pub fn encode(&self, out: &mut ValueWriter) {
        match self {
            Self::Count(n) => {
                out.i64(*n);
            }
            Self::Int { sum, n } | Self::Decimal { sum, n } => {
                out.i128(*sum).i64(*n);
            }
            Self::Float { sum, n } => {
                out.f64(*sum).i64(*n);
            }
            Self::Bool { trues, falses } => {
                out.i64(*trues).i64(*falses);
            }
            Self::Multiset(set) => {
                out.u32(set.len() as u32);
                for (value, n) in set {
                    out.bytes(value).i64(*n);
                }
            }
        }
    }

    /// Reads a state of `kind` that [`Accumulator::encode`] wrote.
    pub fn decode(kind: &ValueKind, input: &mut ValueReader<'_>) -> Result<Self> {
        Ok(match kind {
            ValueKind::Counted => Self::Count(input.i64()?),
            ValueKind::Int => Self::Int {
                sum: input.i128()?,
                n: input.i64()?,
            },
            ValueKind::Decimal { .. } => Self::Decimal {
                sum: input.i128()?,
                n: input.i64()?,
            },
            ValueKind::Float => Self::Float {
                sum: input.f64()?,
                n: input.i64()?,
            },
            ValueKind::Bool => Self::Bool {
                trues: input.i64()?,
                falses: input.i64()?,
            },
            ValueKind::Multiset => {
                let mut set = BTreeMap::new();
                for _ in 0..input.u32()? {
                    let value: Box<[u8]> = input.bytes()?.into();
                    set.insert(value, input.i64()?);
                }
                Self::Multiset(set)
            }
        })
    }

    /// The aggregate's current value.
    pub fn value(&self, call: &CallShape, codec: Option<&RowCodec>) -> Result<ScalarValue> {
        use AggregateKind::*;
        let decode_one = |key: &[u8]| -> Result<ScalarValue> {
            let codec =
                codec.ok_or_else(|| ExecutorError::Internal("multiset without codec".into()))?;
            let arrays = codec.decode([key])?;
            Ok(ScalarValue::try_from_array(&arrays[0], 0)?)
        };
        Ok(match (call.kind, self) {
            (Count, Self::Count(n)) => ScalarValue::Int64(Some(*n)),
            (Count, Self::Multiset(set)) => ScalarValue::Int64(Some(set.len() as i64)),
            (
                Sum,
                Self::Int { n: 0, .. } | Self::Float { n: 0, .. } | Self::Decimal { n: 0, .. },
            )
            | (
                Avg,
                Self::Int { n: 0, .. } | Self::Float { n: 0, .. } | Self::Decimal { n: 0, .. },
            ) => ScalarValue::Null,
            (Sum, Self::Int { sum, .. }) => ScalarValue::Int64(i64::try_from(*sum).ok()),
            (Sum, Self::Float { sum, .. }) => ScalarValue::Float64(Some(*sum)),
            (Sum, Self::Decimal { sum, .. }) => ScalarValue::Decimal128(Some(*sum), 38, call.scale),
            (Avg, Self::Int { sum, n }) => ScalarValue::Float64(Some(*sum as f64 / *n as f64)),
            (Avg, Self::Float { sum, n }) => ScalarValue::Float64(Some(*sum / *n as f64)),
            (Avg, Self::Decimal { sum, n }) => {
                // Same rule as DataFusion's batch avg: rescale to the output
                // scale, then truncating division.
                let DataType::Decimal128(p, s) = call.output else {
                    return Err(ExecutorError::Internal(format!(
                        "avg output {}",
                        call.output
                    )));
                };
                let shift = (s as i32 - call.scale as i32).max(0) as u32;
                let value = sum.checked_mul(10i128.pow(shift)).map(|v| v / *n as i128);
                ScalarValue::Decimal128(value, p, s)
            }
            (BoolAnd, Self::Bool { trues, falses }) if trues + falses > 0 => {
                ScalarValue::Boolean(Some(*falses == 0))
            }
            (BoolOr, Self::Bool { trues, falses }) if trues + falses > 0 => {
                ScalarValue::Boolean(Some(*trues > 0))
            }
            (BoolAnd | BoolOr, Self::Bool { .. }) => ScalarValue::Boolean(None),
            (Min, Self::Multiset(set)) => match set.keys().next() {
                Some(k) => decode_one(k)?,
                None => ScalarValue::Null,
            },
            (Max, Self::Multiset(set)) => match set.keys().next_back() {
                Some(k) => decode_one(k)?,
                None => ScalarValue::Null,
            },
            (StringAgg, Self::Multiset(set)) => {
                if set.is_empty() {
                    return Ok(ScalarValue::Utf8(None));
                }
                let codec = codec
                    .ok_or_else(|| ExecutorError::Internal("string_agg without codec".into()))?;
                let keys: Vec<&[u8]> = if call.descending {
                    set.iter()
                        .rev()
                        .flat_map(|(k, n)| repeat(k, *n, call.distinct))
                        .collect()
                } else {
                    set.iter()
                        .flat_map(|(k, n)| repeat(k, *n, call.distinct))
                        .collect()
                };
                let arrays = codec.decode(keys)?;
                let strings = datafusion::arrow::compute::cast(&arrays[0], &DataType::Utf8)?;
                let strings = strings
                    .as_any()
                    .downcast_ref::<datafusion::arrow::array::StringArray>()
                    .ok_or_else(|| ExecutorError::Internal("string_agg cast".into()))?;
                let parts: Vec<&str> = strings.iter().flatten().collect();
                ScalarValue::Utf8(Some(parts.join(&call.delimiter)))
            }
            (kind, state) => {
                return Err(ExecutorError::Internal(format!(
                    "{kind:?} over state {state:?}"
                )));
            }
        })
    }
}

fn repeat(key: &[u8], n: i64, distinct: bool) -> impl Iterator<Item = &[u8]> {
    std::iter::repeat_n(key, if distinct { 1 } else { n.max(0) as usize })
}

/// What [`Accumulator::value`] needs to know about its call.
#[derive(Debug, Clone)]
pub struct CallShape {
    /// Function.
    pub kind: AggregateKind,
    /// `DISTINCT`.
    pub distinct: bool,
    /// Scale of decimal inputs.
    pub scale: i8,
    /// Output type.
    pub output: DataType,
    /// `string_agg` delimiter.
    pub delimiter: String,
    /// `string_agg` in descending order.
    pub descending: bool,
}
