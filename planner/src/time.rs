//! Event time as nanoseconds since the epoch: what session windows and
//! interval joins compute with, whatever the timestamp unit of the column.

use datafusion::arrow::array::{ArrayRef, AsArray, Int64Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Int64Type, TimeUnit};
use datafusion::common::{Result, ScalarValue, exec_err};

/// A wall-clock time as nanoseconds since the Unix epoch (0 before it).
pub fn system_time_nanos(time: std::time::SystemTime) -> i64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// Time values as nanoseconds since the epoch (NULL stays NULL).
pub fn time_nanos(array: &ArrayRef) -> Result<Int64Array> {
    let tz = match array.data_type() {
        DataType::Timestamp(_, tz) => tz.clone(),
        other => return exec_err!("a session window needs a timestamp column, got {other}"),
    };
    let nanos = cast(array, &DataType::Timestamp(TimeUnit::Nanosecond, tz))?;
    Ok(cast(&nanos, &DataType::Int64)?
        .as_primitive::<Int64Type>()
        .clone())
}

/// Nanosecond times back as values of `time_type`.
pub fn nanos_to_time(nanos: Int64Array, time_type: &DataType) -> Result<ArrayRef> {
    let DataType::Timestamp(_, tz) = time_type else {
        return exec_err!("a session window needs a timestamp column, got {time_type}");
    };
    let nanos = cast(
        &nanos,
        &DataType::Timestamp(TimeUnit::Nanosecond, tz.clone()),
    )?;
    Ok(cast(&nanos, time_type)?)
}

/// A timestamp value as nanoseconds (None for NULL or a non-timestamp).
pub fn scalar_nanos(value: &ScalarValue) -> Option<i64> {
    let DataType::Timestamp(_, tz) = value.data_type() else {
        return None;
    };
    match value.cast_to(&DataType::Timestamp(TimeUnit::Nanosecond, tz)) {
        Ok(ScalarValue::TimestampNanosecond(n, _)) => n,
        _ => None,
    }
}
