//! Carrying watermarks through expressions.
//!
//! A watermark on input column `c` says every later row has `c >= w`. An
//! output column computed by an expression that is non-decreasing in `c`
//! alone (constants aside) then has the watermark `f(w)`: every later row
//! has `f(c) >= f(w)`. [`is_monotone_in`] recognises such expressions
//! (columns, constants, `+`/`-` of a constant, casts, `date_bin`,
//! `date_trunc`) and [`derive`] evaluates `f(w)`.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions, new_null_array};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::logical_expr::Operator as BinaryOp;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::ScalarFunctionExpr;
use datafusion::physical_expr::expressions::{BinaryExpr, CastExpr, Column, Literal, TryCastExpr};
use datafusion::scalar::ScalarValue;

use crate::error::Result;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Shape {
    Constant,
    Increasing,
    Other,
}

fn shape(expr: &Arc<dyn PhysicalExpr>, column: usize) -> Shape {
    let any: &dyn PhysicalExpr = expr.as_ref();
    if let Some(c) = any.downcast_ref::<Column>() {
        return if c.index() == column {
            Shape::Increasing
        } else {
            Shape::Other
        };
    }
    if any.downcast_ref::<Literal>().is_some() {
        return Shape::Constant;
    }
    if let Some(cast) = any.downcast_ref::<CastExpr>() {
        return shape(cast.expr(), column);
    }
    if let Some(cast) = any.downcast_ref::<TryCastExpr>() {
        return shape(cast.expr(), column);
    }
    if let Some(b) = any.downcast_ref::<BinaryExpr>() {
        let (l, r) = (shape(b.left(), column), shape(b.right(), column));
        return match (b.op(), l, r) {
            (_, Shape::Constant, Shape::Constant) => Shape::Constant,
            (BinaryOp::Plus, Shape::Increasing, Shape::Constant)
            | (BinaryOp::Plus, Shape::Constant, Shape::Increasing)
            | (BinaryOp::Minus, Shape::Increasing, Shape::Constant) => Shape::Increasing,
            _ => Shape::Other,
        };
    }
    if let Some(f) = any.downcast_ref::<ScalarFunctionExpr>() {
        let args: Vec<Shape> = f.args().iter().map(|a| shape(a, column)).collect();
        return match (f.name(), args.as_slice()) {
            ("date_bin", [Shape::Constant, Shape::Increasing])
            | ("date_bin", [Shape::Constant, Shape::Increasing, Shape::Constant])
            | ("date_trunc", [Shape::Constant, Shape::Increasing]) => Shape::Increasing,
            (_, args) if args.iter().all(|a| *a == Shape::Constant) => Shape::Constant,
            _ => Shape::Other,
        };
    }
    Shape::Other
}

/// Whether `expr` is non-decreasing in input column `column` and depends on
/// no other column.
pub fn is_monotone_in(expr: &Arc<dyn PhysicalExpr>, column: usize) -> bool {
    shape(expr, column) == Shape::Increasing
}

/// `expr` evaluated where input column `column` is `value` (other columns
/// NULL, which a monotone expression does not read).
pub fn derive(
    expr: &Arc<dyn PhysicalExpr>,
    schema: &SchemaRef,
    column: usize,
    value: &ScalarValue,
) -> Result<Option<ScalarValue>> {
    let columns = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            if i == column {
                value.cast_to(f.data_type())?.to_array_of_size(1)
            } else {
                Ok(new_null_array(f.data_type(), 1))
            }
        })
        .collect::<datafusion::error::Result<Vec<ArrayRef>>>()?;
    let batch = RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(1)),
    )?;
    let result = expr.evaluate(&batch)?.into_array(1)?;
    let derived = ScalarValue::try_from_array(&result, 0)?;
    Ok((!derived.is_null()).then_some(derived))
}
