//! The committed rows of one table or view, and the parts that store them.
//!
//! Rows start *appended*: the Arrow batches as they arrived, in order, kept
//! without a copy, as long as nothing was ever retracted (a source's rows, a
//! projection or filter of them, windows emitted on close, a table nobody
//! deleted from). The first retraction turns them into a *bag* (encoded row
//! -> multiplicity) for good. Appending costs no encoding and no hashing,
//! which is most of what an append-only view costs to maintain.
//!
//! Checkpoint parts follow the form (see `eddy_storage`'s `row_parts`):
//! appended rows are written as Arrow IPC streams; a bag writes each epoch's
//! changed rows as a delta part, and a base part (every row, replacing all
//! parts before it) when it stops being appended or when superseded entries
//! outweigh the live rows.
//!
//! A relation can be *held* ([`Hold`]): while a failed pipeline reading it
//! may restart from an older epoch `e` (see the coordinator's `replay`), a
//! base keeps the parts up to `e`, so they still fold to its rows at `e`,
//! and [`RelationRows::changes_since`] tells what changed since; the parts
//! after `e` are replaced as usual, so a long wait does not grow them.
//! Just after a recovery, before the failures are tracked again, which
//! epochs are needed is not known, and no base is written.
//!
//! Invariants: `Appended` holds every row of the relation exactly as often
//! as it was inserted, in the order inserted; once a bag, never appended
//! again; what the parts in the store fold to equals the rows here at every
//! durable epoch, and the parts up to an epoch no base followed fold to the
//! rows at that epoch.

use std::collections::hash_map::Entry;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;

use eddy_storage::{CheckpointBatch, PartKind, Store, StoredPart, StoredRows};

use crate::codec::RowCodec;
use crate::error::{ExecutorError, Result};
use crate::message::{Op, StreamChunk};

/// Net change of a relation's rows: encoded row -> change in multiplicity.
pub type Delta = crate::hash::HashMap<Box<[u8]>, i64>;

/// Rows per decoded batch, and the size small appended batches are merged up to.
const BATCH_ROWS: usize = 8192;

/// Appended rows are cut into IPC parts of about this size.
const PART_BYTES: usize = 4 << 20;

/// A relation's change over an epoch, as its materialize operator hands it over.
#[derive(Debug)]
pub enum Changes {
    /// Rows inserted, nothing retracted.
    Appended(Vec<RecordBatch>),
    /// Net change per encoded row.
    Counted(Delta),
}

impl Changes {
    /// Whether the change changes nothing.
    pub fn is_empty(&self) -> bool {
        match self {
            Changes::Appended(batches) => batches.iter().all(|b| b.num_rows() == 0),
            Changes::Counted(delta) => delta.is_empty(),
        }
    }
}

#[derive(Debug)]
enum Content {
    Appended(Vec<RecordBatch>),
    Bag(Delta),
}

/// Which of a relation's parts must stay for failed readers that may
/// restart from an older epoch (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hold {
    /// None: a base replaces every part.
    None,
    /// The parts up to this epoch: a base replaces only the later ones.
    Through(u64),
    /// Every part (the epochs needed are not known yet): no base.
    All,
}

/// The committed rows of one relation.
#[derive(Debug)]
pub(crate) struct RelationRows {
    schema: SchemaRef,
    codec: RowCodec,
    content: Content,
    /// What the relation's parts in the store hold.
    stored: StoredRows,
    /// Set when the parts must be replaced by a base at the epoch's end.
    rebase: bool,
    /// A hold kept parts before the last base: a base is due once it ends.
    kept: bool,
    /// Decoded rows, valid until the next change.
    cache: Option<Arc<Vec<RecordBatch>>>,
}

impl RelationRows {
    /// No rows.
    pub(crate) fn new(schema: SchemaRef) -> Result<Self> {
        Ok(Self {
            codec: RowCodec::for_schema(&schema)?,
            schema,
            content: Content::Appended(Vec::new()),
            stored: StoredRows::default(),
            rebase: false,
            kept: false,
            cache: None,
        })
    }

    /// The rows relation `id`'s parts in `store` hold.
    pub(crate) fn restore(schema: SchemaRef, store: &Store, id: u32) -> Result<Self> {
        Self::restore_at(schema, store, id, u64::MAX)
    }

    /// The rows relation `id`'s parts in `store` held at epoch `epoch`
    /// (exact if it was held since, see the module docs).
    pub(crate) fn restore_at(
        schema: SchemaRef,
        store: &Store,
        id: u32,
        epoch: u64,
    ) -> Result<Self> {
        let mut rows = Self::new(schema)?;
        let mut failed = None;
        let (mut base, mut read) = (None, false);
        let stored = store.scan_committed_rows_until(id, epoch, |part| {
            if failed.is_some() {
                return;
            }
            let applied = match part {
                StoredPart::Appended(ipc) => read_ipc(ipc).and_then(|batches| {
                    rows.apply(id, 0, Changes::Appended(batches), None, Hold::None)
                }),
                StoredPart::Row(row, count) => rows.set_count(row, count),
                StoredPart::Base(epoch) if base != Some(epoch) => {
                    // It replaces what was read before it.
                    base = Some(epoch);
                    rows.kept |= read;
                    rows.content = Content::Bag(Delta::default());
                    Ok(())
                }
                StoredPart::Base(_) => Ok(()),
            };
            read = true;
            failed = applied.err();
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        // What the store holds is the relation as it is: nothing to rewrite
        // for having been read.
        rows.rebase = false;
        rows.stored = StoredRows {
            stored_bytes: stored.stored_bytes,
            live_bytes: match &rows.content {
                Content::Appended(_) => stored.stored_bytes,
                Content::Bag(bag) => live_bytes(bag),
            },
        };
        Ok(rows)
    }

    /// Sets a restored row's multiplicity (the last part holding it wins).
    fn set_count(&mut self, row: &[u8], count: i64) -> Result<()> {
        let bag = self.bag()?;
        if count == 0 {
            bag.remove(row);
        } else {
            bag.insert(row.into(), count);
        }
        Ok(())
    }

    /// The rows as a bag, turning appended rows into one (for good: the
    /// parts are then due a base).
    fn bag(&mut self) -> Result<&mut Delta> {
        if let Content::Appended(batches) = &self.content {
            let bag = encode_rows(&self.codec, batches)?;
            self.stored.live_bytes = live_bytes(&bag);
            self.content = Content::Bag(bag);
            self.rebase = true;
        }
        match &mut self.content {
            Content::Bag(bag) => Ok(bag),
            Content::Appended(_) => unreachable!("appended rows were just made a bag"),
        }
    }

    /// Applies epoch `epoch`'s `changes`, writing their part into `batch`
    /// (when checkpointing) as relation `id`; held by [`Hold::All`], as a
    /// delta part even when a base is due (see the module docs).
    pub(crate) fn apply(
        &mut self,
        id: u32,
        epoch: u64,
        changes: Changes,
        batch: Option<&mut CheckpointBatch>,
        hold: Hold,
    ) -> Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        self.cache = None;
        let delta = match (changes, &mut self.content) {
            (Changes::Appended(new), Content::Appended(batches)) => {
                if let Some(batch) = batch {
                    let bytes = write_ipc(&self.schema, &new, |ipc| {
                        batch.appended_part(id, epoch, ipc);
                    })?;
                    self.stored.stored_bytes += bytes;
                    self.stored.live_bytes += bytes;
                }
                return append_batches(batches, new);
            }
            (Changes::Appended(new), Content::Bag(_)) => encode_rows(&self.codec, &new)?,
            (Changes::Counted(delta), _) => delta,
        };
        self.bag()?;
        let mut part = match batch {
            Some(batch) if hold == Hold::All || (!self.rebase && !self.stored.rewrite_due()) => {
                self.rebase |= self.stored.rewrite_due();
                Some(batch.rows_part(id, epoch, PartKind::Delta))
            }
            Some(_) => {
                self.rebase = true;
                None
            }
            None => None,
        };
        let Content::Bag(bag) = &mut self.content else {
            unreachable!("bag() made the rows a bag");
        };
        let stored = &mut self.stored;
        merge_counts(bag, delta, |row, old, new| {
            stored.changed(row, old, new);
            if let Some(part) = part.as_mut() {
                part.push(row, new);
            }
        });
        if let Some(part) = part {
            self.stored.stored_bytes += part.finish();
        }
        Ok(())
    }

    /// Ends epoch `epoch` as relation `id`: writes a base part into `batch`
    /// if one is due, keeping what `hold` keeps (under [`Hold::All`] it
    /// stays due).
    pub(crate) fn end_epoch(
        &mut self,
        id: u32,
        epoch: u64,
        batch: &mut CheckpointBatch,
        hold: Hold,
    ) {
        // The parts a hold kept go once it ends.
        self.rebase |= self.kept && hold == Hold::None;
        if hold == Hold::All || !std::mem::take(&mut self.rebase) {
            return;
        }
        if let Content::Bag(bag) = &self.content {
            let kind = match hold {
                Hold::Through(e) => PartKind::BaseKeeping(e),
                Hold::None | Hold::All => PartKind::Base,
            };
            self.kept = hold != Hold::None;
            let mut part = batch.rows_part(id, epoch, kind);
            for (row, count) in bag {
                part.push(row, *count);
            }
            self.stored.stored_bytes = part.finish();
        }
    }

    /// The rows as Arrow batches.
    pub(crate) fn batches(&mut self) -> Result<Arc<Vec<RecordBatch>>> {
        if let Some(cache) = &self.cache {
            return Ok(cache.clone());
        }
        let batches = match &self.content {
            Content::Appended(batches) => batches.clone(),
            Content::Bag(bag) => self.decode_bag(bag)?,
        };
        let batches = Arc::new(batches);
        self.cache = Some(batches.clone());
        Ok(batches)
    }

    fn decode_bag(&self, bag: &Delta) -> Result<Vec<RecordBatch>> {
        self.decode_rows(bag.iter().map(|(row, n)| (row.as_ref(), *n)))
    }

    /// Batches of up to [`BATCH_ROWS`] rows holding each encoded row of
    /// `rows` as often as its count says.
    fn decode_rows<'r>(
        &self,
        rows: impl Iterator<Item = (&'r [u8], i64)>,
    ) -> Result<Vec<RecordBatch>> {
        let mut batches = Vec::new();
        let mut pending: Vec<&[u8]> = Vec::with_capacity(BATCH_ROWS);
        let flush = |pending: &mut Vec<&[u8]>, batches: &mut Vec<RecordBatch>| -> Result<()> {
            let columns = self.codec.decode(pending.drain(..))?;
            batches.push(RecordBatch::try_new(self.schema.clone(), columns)?);
            Ok(())
        };
        for (row, n) in rows {
            for _ in 0..n {
                pending.push(row);
                if pending.len() == BATCH_ROWS {
                    flush(&mut pending, &mut batches)?;
                }
            }
        }
        if !pending.is_empty() {
            flush(&mut pending, &mut batches)?;
        }
        Ok(batches)
    }

    /// What changed from `older` (these rows at an earlier epoch) to these
    /// rows, as chunks of inserts and deletes.
    pub(crate) fn changes_since(&self, mut older: RelationRows) -> Result<Vec<StreamChunk>> {
        if let (Content::Appended(now), Content::Appended(then)) = (&self.content, &older.content) {
            // Rows are appended in order: those at the earlier epoch come first.
            let mut skip: usize = then.iter().map(RecordBatch::num_rows).sum();
            let mut out = Vec::new();
            for batch in now {
                let from = skip.min(batch.num_rows());
                skip -= from;
                if from < batch.num_rows() {
                    out.push(StreamChunk::inserts(
                        batch.slice(from, batch.num_rows() - from),
                    ));
                }
            }
            return Ok(out);
        }
        let mut delta = match &self.content {
            Content::Bag(bag) => bag.clone(),
            Content::Appended(batches) => encode_rows(&self.codec, batches)?,
        };
        for (row, count) in older.bag()?.iter() {
            add_change(&mut delta, row, -count);
        }
        let mut out = Vec::new();
        for (op, sign) in [(Op::Delete, -1), (Op::Insert, 1)] {
            let rows = delta
                .iter()
                .filter(|(_, n)| n.signum() == sign)
                .map(|(row, n)| (row.as_ref(), n.abs()));
            for batch in self.decode_rows(rows)? {
                let ops = vec![op; batch.num_rows()].into();
                out.push(StreamChunk { batch, ops });
            }
        }
        Ok(out)
    }

    /// The schema of the rows.
    pub(crate) fn schema(&self) -> &SchemaRef {
        &self.schema
    }
}

/// `batches`' rows, counted.
fn encode_rows(codec: &RowCodec, batches: &[RecordBatch]) -> Result<Delta> {
    let mut bag = Delta::default();
    for batch in batches {
        for row in codec.encode(batch.columns())?.iter() {
            add_change(&mut bag, row.data(), 1);
        }
    }
    Ok(bag)
}

/// The bytes `bag`'s rows take in a part.
fn live_bytes(bag: &Delta) -> u64 {
    let mut stored = StoredRows::default();
    for (row, count) in bag {
        stored.changed(row, 0, *count);
    }
    stored.live_bytes
}

/// Appends `new` to `batches`, merging runs of small batches (with the last
/// one already there) into batches of up to [`BATCH_ROWS`] rows, so a
/// relation fed a row at a time does not end as a million one-row batches.
/// Each run is concatenated once: appending costs what it appends.
fn append_batches(batches: &mut Vec<RecordBatch>, new: Vec<RecordBatch>) -> Result<()> {
    let mut run: Vec<RecordBatch> = Vec::new();
    let mut run_rows = 0;
    if batches.last().is_some_and(|b| b.num_rows() < BATCH_ROWS) {
        run.extend(batches.pop());
        run_rows = run[0].num_rows();
    }
    for batch in new.into_iter().filter(|b| b.num_rows() > 0) {
        if run_rows + batch.num_rows() > BATCH_ROWS && !run.is_empty() {
            batches.push(concat_run(std::mem::take(&mut run))?);
            run_rows = 0;
        }
        run_rows += batch.num_rows();
        run.push(batch);
    }
    if !run.is_empty() {
        batches.push(concat_run(run)?);
    }
    Ok(())
}

/// One batch of a run's rows (the batch itself when it is alone).
fn concat_run(mut run: Vec<RecordBatch>) -> Result<RecordBatch> {
    if run.len() == 1 {
        return Ok(run.remove(0));
    }
    Ok(concat_batches(&run[0].schema(), &run)?)
}

/// Writes `batches` as IPC streams of about [`PART_BYTES`] each, handing each
/// to `put`; returns the bytes written.
fn write_ipc(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    mut put: impl FnMut(&[u8]),
) -> Result<u64> {
    let mut written = 0;
    let mut rest = batches.iter().filter(|b| b.num_rows() > 0).peekable();
    while rest.peek().is_some() {
        let mut writer = StreamWriter::try_new(Vec::new(), schema)?;
        while let Some(batch) = rest.next_if(|_| writer.get_ref().len() < PART_BYTES) {
            writer.write(batch)?;
        }
        writer.finish()?;
        let ipc = writer.into_inner()?;
        put(&ipc);
        written += ipc.len() as u64 + 1;
    }
    Ok(written)
}

fn read_ipc(ipc: &[u8]) -> Result<Vec<RecordBatch>> {
    let reader = StreamReader::try_new(ipc, None)?;
    reader
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(ExecutorError::from)
}

/// Adds `delta` into `into`, dropping rows whose multiplicity becomes zero;
/// tells `changed` each changed row's old and new multiplicity.
fn merge_counts(into: &mut Delta, delta: Delta, mut changed: impl FnMut(&[u8], i64, i64)) {
    for (row, change) in delta {
        if change == 0 {
            continue;
        }
        match into.entry(row) {
            Entry::Occupied(mut e) => {
                let old = *e.get();
                *e.get_mut() += change;
                changed(e.key(), old, *e.get());
                if *e.get() == 0 {
                    e.remove();
                }
            }
            Entry::Vacant(e) => {
                changed(e.key(), 0, change);
                e.insert(change);
            }
        }
    }
}

/// Adds one row's change into `delta` without allocating for rows already in it.
pub(crate) fn add_change(delta: &mut Delta, row: &[u8], change: i64) {
    match delta.get_mut(row) {
        Some(n) => {
            *n += change;
            if *n == 0 {
                delta.remove(row);
            }
        }
        None => {
            delta.insert(row.into(), change);
        }
    }
}
