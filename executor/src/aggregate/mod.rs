//! Grouped aggregation over a changelog.
//!
//! State: group key (encoded) -> row count and one [`Accumulator`] per call.
//! Changes are applied as they arrive; output is held back until the
//! barrier. At the first touch of a group in an epoch its previous output
//! row is remembered, and at the barrier every touched group emits
//! `delete old` + `insert new` (nothing when unchanged, only the delete
//! when the group emptied). A global aggregate (no GROUP BY) always has
//! exactly one row, as SQL requires, starting with `count = 0` on empty input.
//!
//! Windows: when a group column carries a watermark (a window start or end,
//! see [`WindowKey`]), a group whose window value falls below the watermark
//! can never change again. It is then released from state — and, with
//! `EMIT ON WINDOW CLOSE`, emitted once, final, only then. Rows that arrive
//! for such a group anyway are late: dropped and counted.
//!
//! Without a window, `state_ttl` bounds state instead: a group no epoch
//! changed for the TTL is expired, its row retracted (see [`crate::state_ttl`]).

mod accumulator;

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::row::Rows;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::scalar::ScalarValue;

pub use accumulator::{Accumulator, CallShape, ValueKind};

use crate::checkpoint::{StateEntries, StateWriter, ValueReader, ValueWriter};
use crate::codec::RowCodec;
use crate::error::{ExecutorError, Result};
use crate::eval::Evaluator;
use crate::hash::HashMap;
use crate::keyed_state::{KeyVisitor, KeyedState, StateConfig, StoreTable};
use crate::late_rows::LateRows;
use crate::message::{Barrier, Op, StreamChunk, Watermark};
use crate::operator::{Operator, StateSize};
use crate::state_ttl::StateTtl;
use crate::window_index::{CLOSED_KEY, WindowIndex};

/// One aggregate call, ready to run.
#[derive(Debug)]
pub struct AggregateSpec {
    /// Argument expression.
    pub arg: Arc<dyn PhysicalExpr>,
    /// `FILTER (WHERE ...)`.
    pub filter: Option<Arc<dyn PhysicalExpr>>,
    /// How values accumulate.
    pub value_kind: ValueKind,
    /// Type the argument is cast to before accumulating.
    pub value_type: DataType,
    /// Output shape.
    pub shape: CallShape,
}

/// The group column that carries a watermark.
#[derive(Debug)]
pub struct WindowKey {
    /// Index of the group expression (and output column).
    pub group: usize,
    /// The input column with a watermark the group expression is, or is
    /// non-decreasing in.
    pub input_column: usize,
    /// The input's schema when the group expression is not the column
    /// itself: the bound it closes windows at is the expression of the
    /// column's watermark (see [`crate::watermark::derive`]).
    pub input: Option<SchemaRef>,
    /// `EMIT ON WINDOW CLOSE`: emit each group once, when its window closes.
    pub emit_on_close: bool,
    /// Where late rows are counted.
    pub late: LateRows,
    /// Whether group keys start with the window value, whatever the
    /// window's place among the group expressions (state layout 3 on; an
    /// older checkpoint keeps the order it was written in): groups are
    /// then stored in window order, and the closed ones leave the store in
    /// one range deletion.
    pub leads_key: bool,
}

#[derive(Debug)]
struct Windows {
    key: WindowKey,
    codec: RowCodec,
    /// The groups in state, by encoded window value; the closed bound.
    index: WindowIndex<Encoded>,
}

#[derive(Debug)]
struct Group {
    rows: i64,
    accumulators: Vec<Accumulator>,
    /// Encoded window value, for windowed aggregates.
    window: Option<Box<[u8]>>,
    /// Time of the last epoch that changed it, with a state TTL.
    stamp: Option<i64>,
}

fn new_group(calls: &[AggregateSpec]) -> Group {
    Group {
        rows: 0,
        accumulators: calls
            .iter()
            .map(|c| Accumulator::new(&c.value_kind))
            .collect(),
        window: None,
        stamp: None,
    }
}

impl Group {
    fn encode(&self) -> Vec<u8> {
        let mut out = ValueWriter::new();
        out.i64(self.rows).opt_bytes(self.window.as_deref());
        for acc in &self.accumulators {
            acc.encode(&mut out);
        }
        if let Some(stamp) = self.stamp {
            out.i64(stamp);
        }
        out.finish()
    }

    /// Decodes a group; `stamped` when its operator has a state TTL.
    fn decode(calls: &[AggregateSpec], value: &[u8], stamped: bool) -> Result<Self> {
        let mut input = ValueReader::new(value);
        let rows = input.i64()?;
        let window = input.opt_bytes()?.map(Box::from);
        let accumulators = calls
            .iter()
            .map(|c| Accumulator::decode(&c.value_kind, &mut input))
            .collect::<Result<_>>()?;
        let stamp = if stamped { Some(input.i64()?) } else { None };
        Ok(Self {
            rows,
            accumulators,
            window,
            stamp,
        })
    }
}

/// An encoded value (Arrow row format): a group key or a window value.
type Encoded = Box<[u8]>;

/// One group's change at the end of an epoch.
type Change<'a> = (Op, &'a [u8], Vec<ScalarValue>);

/// The hash aggregate operator.
#[derive(Debug)]
pub struct HashAggregate {
    // Fixed at plan time.
    group_exprs: Vec<Arc<dyn PhysicalExpr>>,
    group_types: Vec<DataType>,
    /// Group expressions in the order their values make up a group key.
    key_order: Vec<usize>,
    /// Encodes group keys, their columns in `key_order`.
    group_codec: RowCodec,
    calls: Vec<AggregateSpec>,
    value_codecs: Vec<Option<RowCodec>>,
    schema: SchemaRef,
    evaluator: Evaluator,
    windows: Option<Windows>,
    // State.
    groups: KeyedState<Group>,
    /// Groups touched this epoch -> their output row before the epoch.
    touched: HashMap<Box<[u8]>, Option<Vec<ScalarValue>>>,
    /// Groups by the time they last changed, with a state TTL.
    ttl: Option<StateTtl<Encoded>>,
    /// Whether input arrived in the epoch (where tests inject failures).
    had_input: bool,
}

impl HashAggregate {
    /// An aggregate grouping by `group_exprs` (of `group_types`) producing `schema`.
    pub fn new(
        group_exprs: Vec<Arc<dyn PhysicalExpr>>,
        group_types: Vec<DataType>,
        calls: Vec<AggregateSpec>,
        schema: SchemaRef,
        evaluator: Evaluator,
        window: Option<WindowKey>,
    ) -> Result<Self> {
        let windows = window
            .map(|key| {
                let codec = RowCodec::new(vec![group_types[key.group].clone()])?;
                Ok::<_, crate::error::ExecutorError>(Windows {
                    key,
                    codec,
                    index: WindowIndex::default(),
                })
            })
            .transpose()?;
        let mut key_order: Vec<usize> = (0..group_exprs.len()).collect();
        if let Some(w) = windows.as_ref().filter(|w| w.key.leads_key) {
            key_order.remove(w.key.group);
            key_order.insert(0, w.key.group);
        }
        let key_types = key_order.iter().map(|&i| group_types[i].clone()).collect();
        let value_codecs = calls
            .iter()
            .map(|c| match c.value_kind {
                ValueKind::Multiset => RowCodec::new(vec![c.value_type.clone()]).map(Some),
                _ => Ok(None),
            })
            .collect::<Result<_>>()?;
        let global = group_exprs.is_empty();
        let mut this = Self {
            group_exprs,
            group_types,
            key_order,
            group_codec: RowCodec::new(key_types)?,
            calls,
            value_codecs,
            schema,
            evaluator,
            windows,
            groups: KeyedState::default(),
            touched: HashMap::default(),
            ttl: None,
            had_input: false,
        };
        if global {
            // The one row of a global aggregate exists before any input.
            let key: Box<[u8]> = Box::new([]);
            let group = new_group(&this.calls);
            this.groups.insert(key.clone(), group);
            this.touched.insert(key, None);
        }
        Ok(this)
    }

    /// Expires groups no epoch changed for `ttl`. Only an aggregate whose
    /// state nothing else bounds takes one: a global aggregate has its one
    /// row always, and windows close by watermark.
    pub fn with_state_ttl(mut self, ttl: Option<Duration>) -> Self {
        if !self.is_global() && self.windows.is_none() {
            self.ttl = ttl.map(StateTtl::new);
        }
        self
    }

    /// Keeps the groups as `config` says.
    pub fn with_state_config(mut self, config: StateConfig) -> Self {
        self.groups.place().configure(config);
        self
    }

    /// Makes sure the groups of `keys` can be read (see [`KeyedState::load`]).
    fn load<'k>(&mut self, keys: impl IntoIterator<Item = &'k [u8]>) -> Result<()> {
        let (calls, stamped) = (&self.calls, self.ttl.is_some());
        self.groups
            .load(keys, |value| Group::decode(calls, value, stamped))
    }

    fn is_global(&self) -> bool {
        self.group_exprs.is_empty()
    }

    fn output_row(&self, group: &Group) -> Result<Vec<ScalarValue>> {
        group
            .accumulators
            .iter()
            .zip(&self.calls)
            .zip(&self.value_codecs)
            .map(|((acc, call), codec)| acc.value(&call.shape, codec.as_ref()))
            .collect()
    }

    fn emits_on_close(&self) -> bool {
        self.windows.as_ref().is_some_and(|w| w.key.emit_on_close)
    }

    /// Group keys of `batch`'s rows (none for a global aggregate: every
    /// row's key is empty), and their encoded window values.
    fn group_keys(&self, batch: &RecordBatch) -> Result<(Option<Rows>, Option<Rows>)> {
        if self.is_global() {
            return Ok((None, None));
        }
        let columns = self.evaluator.eval_all(&self.group_exprs, batch)?;
        let columns = columns
            .iter()
            .zip(&self.group_types)
            .map(|(c, t)| {
                if c.data_type() == t {
                    Ok(c.clone())
                } else {
                    cast(c, t)
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let in_key_order: Vec<ArrayRef> =
            self.key_order.iter().map(|&i| columns[i].clone()).collect();
        let rows = self.group_codec.encode(&in_key_order)?;
        let windows = match &self.windows {
            Some(w) => Some(w.codec.encode(&columns[w.key.group..=w.key.group])?),
            None => None,
        };
        Ok((Some(rows), windows))
    }

    /// The changes group `key` makes this epoch, given its row before it.
    /// Returns whether the group is now empty (and must leave state).
    fn settle<'k>(
        &self,
        key: &'k [u8],
        before: &Option<Vec<ScalarValue>>,
        rows: &mut Vec<Change<'k>>,
    ) -> Result<bool> {
        let (after, emptied) = match self.groups.get(key) {
            Some(g) if g.rows > 0 || self.is_global() => (Some(self.output_row(g)?), false),
            _ => (None, true),
        };
        if before != &after {
            if let Some(before) = before {
                rows.push((Op::Delete, key, before.clone()));
            }
            if let Some(after) = after {
                rows.push((Op::Insert, key, after));
            }
        }
        Ok(emptied)
    }

    fn remove_group(&mut self, key: &[u8]) {
        let Some(group) = self.groups.remove(key) else {
            return;
        };
        if let (Some(window), Some(w)) = (group.window, self.windows.as_mut()) {
            w.index.remove(&window, key.into());
        }
        if let (Some(stamp), Some(ttl)) = (group.stamp, self.ttl.as_mut()) {
            ttl.forget(&key.into(), stamp);
        }
    }

    /// Stamps the groups `touched` changed with the barrier's time `now`,
    /// and takes the groups that expired.
    fn expire(
        &mut self,
        now: i64,
        touched: &HashMap<Encoded, Option<Vec<ScalarValue>>>,
    ) -> Result<Vec<Encoded>> {
        let Some(ttl) = self.ttl.as_mut() else {
            return Ok(vec![]);
        };
        for key in touched.keys() {
            if let Some(group) = self.groups.get_mut(key) {
                group.stamp = Some(ttl.stamp(key, group.stamp, now));
            }
        }
        let expired = ttl.advance(now);
        self.load(expired.iter().map(AsRef::as_ref))?;
        for key in &expired {
            if let Some(group) = self.groups.get_mut(key) {
                // Out of the index already: `remove_group` has nothing to forget.
                group.stamp = None;
            }
        }
        Ok(expired)
    }

    fn build_output(&self, rows: Vec<Change<'_>>) -> Result<StreamChunk> {
        let ops: Vec<Op> = rows.iter().map(|(op, _, _)| *op).collect();
        let mut columns: Vec<ArrayRef> = if self.is_global() {
            vec![]
        } else {
            let decoded = self.group_codec.decode(rows.iter().map(|(_, k, _)| *k))?;
            let mut by_group: Vec<(usize, ArrayRef)> =
                self.key_order.iter().copied().zip(decoded).collect();
            by_group.sort_unstable_by_key(|(i, _)| *i);
            by_group.into_iter().map(|(_, column)| column).collect()
        };
        let n_groups = columns.len();
        for (c, field) in self.schema.fields().iter().enumerate().skip(n_groups) {
            let data_type = field.data_type();
            let values = rows
                .iter()
                .map(|(_, _, v)| match &v[c - n_groups] {
                    v if v.is_null() => ScalarValue::try_from(data_type),
                    v => v.cast_to(data_type),
                })
                .collect::<Result<Vec<_>, _>>()?;
            columns.push(ScalarValue::iter_to_array(values)?);
        }
        let options =
            datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(rows.len()));
        let batch = RecordBatch::try_new_with_options(self.schema.clone(), columns, &options)?;
        Ok(StreamChunk {
            batch,
            ops: ops.into(),
        })
    }
}

impl Operator for HashAggregate {
    fn process(
        &mut self,
        _port: usize,
        chunk: StreamChunk,
        _out: &mut Vec<StreamChunk>,
    ) -> Result<()> {
        let batch = &chunk.batch;
        self.had_input = true;
        let (keys, windows) = self.group_keys(batch)?;
        // Keys are borrowed from the encoded rows; only a new group or a
        // group's first touch in the epoch copies its key.
        let key_of = |i: usize| -> &[u8] { keys.as_ref().map_or(&[], |k| k.row(i).data()) };
        match keys {
            Some(_) => self.load((0..batch.num_rows()).map(key_of))?,
            None => self.load([&[][..]])?,
        }
        let mut values = Vec::with_capacity(self.calls.len());
        for (call, codec) in self.calls.iter().zip(&self.value_codecs) {
            let array = self.evaluator.eval(&call.arg, batch)?;
            let array = if array.data_type() == &call.value_type {
                array
            } else {
                cast(&array, &call.value_type)?
            };
            let mask: Option<BooleanArray> = match &call.filter {
                Some(f) => Some(self.evaluator.eval_predicate(f, batch)?),
                None => None,
            };
            let encoded = match codec {
                Some(codec) => Some(codec.encode(std::slice::from_ref(&array))?),
                None => None,
            };
            values.push((array, mask, encoded));
        }
        let global = self.is_global();
        let tracks_changes = !self.emits_on_close();
        let mut late = Vec::new();
        for i in 0..batch.num_rows() {
            let key = key_of(i);
            let sign = chunk.ops[i].sign();
            if sign < 0 && self.ttl.is_some() && !self.groups.contains_key(key) {
                // Its group expired: what it would retract is gone already.
                continue;
            }
            let window = windows.as_ref().map(|w| w.row(i).data());
            if let (Some(window), Some(w)) = (window, &self.windows)
                && w.index.is_late(window)
            {
                late.push(i);
                continue;
            }
            if tracks_changes && !self.touched.contains_key(key) {
                let before = match self.groups.get(key) {
                    Some(g) if g.rows > 0 || global => Some(self.output_row(g)?),
                    _ => None,
                };
                self.touched.insert(key.into(), before);
            }
            let group = match self.groups.get_mut(key) {
                Some(group) => group,
                None => {
                    let mut group = new_group(&self.calls);
                    if let (Some(window), Some(w)) = (window, self.windows.as_mut()) {
                        group.window = Some(window.into());
                        w.index.open(window, key.into());
                    }
                    self.groups.insert(key.into(), group)
                }
            };
            group.rows += sign;
            for (acc, (array, mask, encoded)) in group.accumulators.iter_mut().zip(&values) {
                if mask.as_ref().is_some_and(|m| !m.is_valid(i) || !m.value(i)) {
                    continue;
                }
                acc.update(sign, array, i, encoded.as_ref().map(|r| r.row(i).data()));
            }
        }
        if let Some(w) = self.windows.as_mut() {
            w.key.late.dropped(batch, &chunk.ops, &late)?;
        }
        Ok(())
    }

    fn late_rows(&mut self) -> Option<&mut LateRows> {
        self.windows.as_mut().map(|w| &mut w.key.late)
    }

    fn state_size(&self) -> Option<StateSize> {
        let groups = self.groups.len();
        Some(StateSize {
            operator: "HashAggregate",
            keys: groups,
            rows: groups,
            cached: self.groups.cached(),
        })
    }

    fn checkpoint(&mut self, state: &mut StateWriter<'_>) {
        self.groups.checkpoint(state, Group::encode);
        if let Some(w) = self.windows.as_mut() {
            w.index.checkpoint(state);
        }
    }

    fn restore(&mut self, entries: StateEntries) -> Result<()> {
        self.touched.clear();
        if let Some(ttl) = self.ttl.as_mut() {
            ttl.clear();
        }
        let mut closed_below = None;
        for (key, value) in entries {
            match (key.as_ref(), self.windows.as_ref()) {
                (CLOSED_KEY, Some(_)) => closed_below = Some(value),
                _ => {
                    return Err(ExecutorError::CorruptState(
                        "an aggregate's state key is unknown".into(),
                    ));
                }
            }
        }
        if let Some(w) = self.windows.as_mut() {
            w.index.restore(closed_below);
        }
        // Windows and TTL stamps index every group: rebuild the indexes.
        let (calls, stamped) = (&self.calls, self.ttl.is_some());
        let (windows, ttl) = (&mut self.windows, &mut self.ttl);
        let indexed = windows.is_some() || ttl.is_some();
        let mut index = |key: &[u8], group: &Group| {
            if let (Some(window), Some(w)) = (&group.window, windows.as_mut()) {
                w.index.open(window, key.into());
            }
            if let (Some(stamp), Some(ttl)) = (group.stamp, ttl.as_mut()) {
                ttl.stamp(&key.into(), None, stamp);
            }
        };
        self.groups.restore(
            |value| Group::decode(calls, value, stamped),
            indexed.then_some(&mut index as &mut KeyVisitor<'_, Group>),
        )?;
        if self.is_global() && self.groups.is_empty() {
            self.groups.insert(Box::new([]), new_group(&self.calls));
        }
        Ok(())
    }

    fn attach_store(&mut self, table: StoreTable) {
        self.groups.place().attach(table);
    }

    fn on_barrier(&mut self, barrier: Barrier, out: &mut Vec<StreamChunk>) -> Result<()> {
        self.groups.end_epoch(barrier.epoch);
        if std::mem::take(&mut self.had_input) {
            // Tests fail a pipeline here, at a barrier after input, to restart it.
            fail::fail_point!("aggregate-barrier", |_| Err(ExecutorError::Internal(
                "injected by fail point aggregate-barrier".into()
            )));
        }
        let touched = std::mem::take(&mut self.touched);
        let expired = self.expire(barrier.now, &touched)?;
        if touched.is_empty() && expired.is_empty() {
            return Ok(());
        }
        let mut rows = Vec::new();
        let mut emptied = Vec::new();
        for (key, before) in &touched {
            if self.settle(key, before, &mut rows)? {
                emptied.push(key);
            }
        }
        for key in &expired {
            if let Some(group) = self.groups.get(key).filter(|g| g.rows > 0) {
                rows.push((Op::Delete, key, self.output_row(group)?));
            }
        }
        if !rows.is_empty() {
            out.push(self.build_output(rows)?);
        }
        for key in emptied.into_iter().chain(&expired) {
            self.remove_group(key);
        }
        Ok(())
    }

    fn on_watermark(
        &mut self,
        _port: usize,
        watermark: Watermark,
        out: &mut Vec<StreamChunk>,
    ) -> Result<Vec<Watermark>> {
        let Some(w) = self.windows.as_mut() else {
            return Ok(vec![]);
        };
        if watermark.column != w.key.input_column {
            return Ok(vec![]);
        }
        let group = w.key.group;
        let value = match &w.key.input {
            Some(schema) => {
                let expr = &self.group_exprs[group];
                match crate::watermark::derive(expr, schema, watermark.column, &watermark.value)? {
                    Some(value) => value,
                    None => return Ok(vec![]),
                }
            }
            None => watermark.value,
        };
        let value = value.cast_to(&w.codec.types()[0])?;
        let encoded = w.codec.encode(&[value.to_array()?])?;
        let bound = encoded.row(0);
        let leads_key = w.key.leads_key;
        let closed = w.index.close_below(bound.as_ref().into());
        self.load(closed.iter().map(AsRef::as_ref))?;
        let mut rows = Vec::new();
        for key in &closed {
            if self.emits_on_close() {
                if let Some(g) = self.groups.get(key).filter(|g| g.rows > 0) {
                    rows.push((Op::Insert, key.as_ref(), self.output_row(g)?));
                }
            } else if let Some(before) = self.touched.remove(key) {
                self.settle(key, &before, &mut rows)?;
            }
        }
        if !rows.is_empty() {
            out.push(self.build_output(rows)?);
        }
        for key in &closed {
            // Out of the window index already; windowed groups have no TTL.
            if leads_key {
                self.groups.remove_below(bound.as_ref(), key);
            } else {
                self.groups.remove(key);
            }
        }
        Ok(vec![Watermark {
            column: group,
            value,
        }])
    }
}
