//! Progress per relation: watermarks and late rows (the
//! `eddy_catalog.watermarks` system table), how far each view's source
//! readers got (`eddy_catalog.source_readers`), and how much state each
//! stateful fragment holds (`eddy_catalog.operator_state`).

use std::collections::BTreeMap;

use datafusion::scalar::ScalarValue;

use crate::operator::StateSize;
use crate::per_relation::PerRelation;

/// One relation's event-time progress.
#[derive(Debug, Clone, Default)]
pub struct RelationProgress {
    /// Latest watermark per output column name.
    pub watermarks: Vec<(String, ScalarValue)>,
    /// Rows dropped because they arrived behind the watermark.
    pub late_rows: u64,
    /// Per source this relation's pipeline reads: its readers' progress.
    pub readers: Vec<(u32, ReaderProgress)>,
    /// State of each stateful fragment, as of its last barrier.
    pub state: BTreeMap<usize, Vec<StateSize>>,
}

/// How far one view's readers of one source got.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReaderProgress {
    /// Splits (readers).
    pub splits: usize,
    /// Splits that reached the end of a bounded source.
    pub finished: usize,
    /// Rows read so far.
    pub rows: u64,
}

/// Progress of every relation that has some.
#[derive(Debug, Default)]
pub struct Progress {
    entries: PerRelation<RelationProgress>,
}

impl Progress {
    fn with<T>(&self, relation: u32, f: impl FnOnce(&mut RelationProgress) -> T) -> T {
        self.entries.with(relation, f)
    }

    /// Records that `relation`'s column `column` reached `value`.
    pub fn watermark(&self, relation: u32, column: &str, value: &ScalarValue) {
        self.with(relation, |p| {
            match p.watermarks.iter_mut().find(|(c, _)| c == column) {
                Some((_, v)) => {
                    if value > v {
                        *v = value.clone();
                    }
                }
                None => p.watermarks.push((column.to_string(), value.clone())),
            }
        });
    }

    /// Counts `rows` late rows dropped by `relation`'s pipeline.
    pub fn late(&self, relation: u32, rows: u64) {
        self.with(relation, |p| p.late_rows += rows);
    }

    /// `relation`'s pipeline starts (again): its late rows are counted
    /// from what its operators restore.
    pub fn restart_late(&self, relation: u32) {
        self.with(relation, |p| p.late_rows = 0);
    }

    fn reader(&self, relation: u32, source: u32, f: impl FnOnce(&mut ReaderProgress)) {
        self.with(relation, |p| {
            let slot = match p.readers.iter().position(|(s, _)| *s == source) {
                Some(i) => &mut p.readers[i].1,
                None => {
                    p.readers.push((source, ReaderProgress::default()));
                    &mut p.readers.last_mut().expect("just pushed").1
                }
            };
            f(slot)
        });
    }

    /// A reader of `source` started in `relation`'s pipeline.
    pub fn reader_started(&self, relation: u32, source: u32) {
        self.reader(relation, source, |r| r.splits += 1);
    }

    /// The relation's readers were stopped to start again: none is running
    /// or finished (the rows they read still count).
    pub fn readers_restarted(&self, relation: u32) {
        self.with(relation, |p| {
            for (_, r) in &mut p.readers {
                r.splits = 0;
                r.finished = 0;
            }
        });
    }

    /// A reader read `rows` more rows.
    pub fn rows_read(&self, relation: u32, source: u32, rows: u64) {
        self.reader(relation, source, |r| r.rows += rows);
    }

    /// A reader reached the end of its split.
    pub fn reader_finished(&self, relation: u32, source: u32) {
        self.reader(relation, source, |r| r.finished += 1);
    }

    /// Fragment `fragment` of `relation`'s pipeline holds `sizes`.
    pub fn state(&self, relation: u32, fragment: usize, sizes: Vec<StateSize>) {
        self.with(relation, |p| p.state.insert(fragment, sizes));
    }

    /// A copy of every relation's progress.
    pub fn snapshot(&self) -> Vec<(u32, RelationProgress)> {
        self.entries.snapshot()
    }

    /// Forgets a dropped relation.
    pub fn forget(&self, relation: u32) {
        self.entries.forget(relation);
    }
}
