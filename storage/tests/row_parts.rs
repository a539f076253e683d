//! A relation's committed rows as parts: deltas fold into the rows, a base
//! replaces what came before, and garbage stays bounded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use eddy_storage::{CheckpointBatch, PartKind, Store, StoredFailure, StoredPart, StoredRows};

const REL: u32 = 3;

struct TempStore {
    /// `None` while something else has the directory open.
    store: Option<Store>,
    dir: PathBuf,
}

impl TempStore {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("eddy-row-parts-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Some(Store::open(&dir).expect("open store"));
        Self { store, dir }
    }

    fn store(&self) -> &Store {
        self.store.as_ref().expect("store is open")
    }

    /// Closes the store, lets `f` at the directory, opens it again.
    fn closed(&mut self, f: impl FnOnce(&Path)) {
        self.store = None;
        f(&self.dir);
        self.store = Some(Store::open(&self.dir).expect("reopen store"));
    }

    /// Commits `rows` (row -> new multiplicity) as epoch `epoch`'s part.
    fn commit(&self, epoch: u64, base: bool, rows: &[(Vec<u8>, i64)]) -> u64 {
        let kind = if base {
            PartKind::Base
        } else {
            PartKind::Delta
        };
        self.commit_part(epoch, kind, rows)
    }

    /// Commits `rows` as epoch `epoch`'s part of `kind`.
    fn commit_part(&self, epoch: u64, kind: PartKind, rows: &[(Vec<u8>, i64)]) -> u64 {
        let mut batch = CheckpointBatch::default();
        let mut part = batch.rows_part(REL, epoch, kind);
        for (row, count) in rows {
            part.push(row, *count);
        }
        let bytes = part.finish();
        batch.finish(epoch, 0, 1);
        self.store().commit_checkpoint(&batch).expect("commit");
        bytes
    }

    /// The committed rows, folded as recovery folds them (appended parts
    /// are taken for one row each).
    fn read(&self) -> (BTreeMap<Vec<u8>, i64>, StoredRows) {
        self.read_at(u64::MAX)
    }

    /// The committed rows at epoch `epoch`, folded from the parts up to it.
    fn read_at(&self, epoch: u64) -> (BTreeMap<Vec<u8>, i64>, StoredRows) {
        let mut rows = BTreeMap::new();
        let stored = self
            .store()
            .scan_committed_rows_until(REL, epoch, |part| match part {
                StoredPart::Base(_) => rows.clear(),
                StoredPart::Row(row, 0) => {
                    rows.remove(row);
                }
                StoredPart::Row(row, count) => {
                    rows.insert(row.to_vec(), count);
                }
                StoredPart::Appended(bytes) => *rows.entry(bytes.to_vec()).or_default() += 1,
            })
            .expect("scan");
        (rows, stored)
    }
}

impl Drop for TempStore {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn row(i: u32, width: usize) -> Vec<u8> {
    let mut r = i.to_be_bytes().to_vec();
    r.resize(width, b'x');
    r
}

/// Epochs 1-3 as deltas: rows 1 and 2 (twice), then 2 gone and 3, then 1
/// three times.
fn commit_three_deltas(s: &TempStore) {
    s.commit(1, false, &[(row(1, 8), 1), (row(2, 8), 2)]);
    s.commit(2, false, &[(row(2, 8), 0), (row(3, 8), 1)]);
    s.commit(3, false, &[(row(1, 8), 3)]);
}

#[test]
fn deltas_fold_in_epoch_order_and_a_base_replaces_them() {
    let s = TempStore::new("fold");
    commit_three_deltas(&s);
    let (rows, stored) = s.read();
    let expected: BTreeMap<_, _> = [(row(1, 8), 3), (row(3, 8), 1)].into();
    assert_eq!(rows, expected);
    // Three parts of one kind byte each plus 4 + 8 + 8 bytes per entry.
    assert_eq!(stored.stored_bytes, 3 + 5 * 20);

    // A base at epoch 4 holds everything; the deltas before it are gone.
    let base: Vec<_> = rows.iter().map(|(r, n)| (r.clone(), *n)).collect();
    let bytes = s.commit(4, true, &base);
    let (after, stored) = s.read();
    assert_eq!(after, expected);
    assert_eq!(stored.stored_bytes, bytes);
    s.commit(5, false, &[(row(3, 8), 0)]);
    assert_eq!(s.read().0, BTreeMap::from([(row(1, 8), 3)]));
}

#[test]
fn parts_up_to_an_epoch_fold_to_the_rows_at_that_epoch() {
    let s = TempStore::new("until");
    commit_three_deltas(&s);
    assert_eq!(s.read_at(0).0, BTreeMap::new());
    assert_eq!(
        s.read_at(1).0,
        BTreeMap::from([(row(1, 8), 1), (row(2, 8), 2)])
    );
    assert_eq!(
        s.read_at(2).0,
        BTreeMap::from([(row(1, 8), 1), (row(3, 8), 1)])
    );
    assert_eq!(s.read_at(3).0, s.read().0);
}

#[test]
fn a_base_keeping_the_parts_up_to_an_epoch_replaces_only_the_later_ones() {
    let s = TempStore::new("keeping");
    commit_three_deltas(&s);
    let at_one = s.read_at(1).0;
    let now = s.read().0;
    // A base at epoch 4 that keeps the parts up to epoch 1.
    let base: Vec<_> = now.iter().map(|(r, n)| (r.clone(), *n)).collect();
    let base_bytes = s.commit_part(4, PartKind::BaseKeeping(1), &base);
    assert_eq!(s.read_at(1).0, at_one, "the rows at the kept epoch");
    let (after, stored) = s.read();
    assert_eq!(after, now, "the base replaces what was read before it");
    // Epoch 1's part (two entries) and the base are left; epochs 2 and 3 went.
    assert_eq!(stored.stored_bytes, 1 + 2 * 20 + base_bytes);
    // A later base that keeps nothing leaves the base alone.
    s.commit(5, false, &[(row(1, 8), 0)]);
    let bytes = s.commit(6, true, &[(row(3, 8), 1)]);
    let (rows, stored) = s.read();
    assert_eq!(rows, BTreeMap::from([(row(3, 8), 1)]));
    assert_eq!(stored.stored_bytes, bytes);
}

#[test]
fn appended_parts_come_back_as_written_until_a_base_replaces_them() {
    let s = TempStore::new("appended");
    let mut batch = CheckpointBatch::default();
    let bytes = batch.appended_part(REL, 1, b"first") + batch.appended_part(REL, 1, b"second");
    batch.finish(1, 0, 1);
    s.store().commit_checkpoint(&batch).expect("commit");
    let (rows, stored) = s.read();
    assert_eq!(
        rows,
        BTreeMap::from([(b"first".to_vec(), 1), (b"second".to_vec(), 1)])
    );
    assert_eq!(stored.stored_bytes, bytes);
    // The relation stops being append-only: a base holds it all from now on.
    s.commit(2, true, &[(row(9, 8), 1)]);
    assert_eq!(s.read().0, BTreeMap::from([(row(9, 8), 1)]));
}

#[test]
fn a_large_epoch_is_cut_into_parts_that_read_back_whole() {
    let s = TempStore::new("large");
    // 12 MiB of rows in one epoch: three or four values of at most ~4 MiB.
    let rows: Vec<_> = (0..12_288).map(|i| (row(i, 1024), 1)).collect();
    let bytes = s.commit(1, false, &rows);
    let (read, stored) = s.read();
    assert_eq!(read.len(), rows.len());
    assert!(read.values().all(|n| *n == 1));
    assert_eq!(stored.stored_bytes, bytes);
    assert!(bytes > 12 << 20);
}

#[test]
fn garbage_beyond_the_live_rows_makes_a_rewrite_due() {
    let mut stored = StoredRows::default();
    let r = row(0, 100);
    stored.changed(&r, 0, 1);
    // The same row rewritten again and again: one live entry, the rest garbage.
    let entry = 4 + 100 + 8;
    let mut epochs = 0;
    while !stored.rewrite_due() {
        stored.stored_bytes += entry;
        epochs += 1;
        assert!(epochs < 1_000_000, "a rewrite never became due");
    }
    // Small relations wait for a minimum of garbage (64 KiB), not for twice
    // their size.
    assert!(stored.stored_bytes > 64 << 10);
    stored.changed(&r, 1, 2);
    assert_eq!(
        stored.live_bytes, entry,
        "a changed count keeps the row's size"
    );
    stored.changed(&r, 2, 0);
    assert_eq!(stored.live_bytes, 0);
}

#[test]
fn rows_in_the_old_one_key_per_row_layout_are_refused_not_misread() {
    let mut s = TempStore::new("old-layout");
    s.commit(1, false, &[(row(1, 8), 1)]);
    // The layout before parts, `v <rel> <row> -> i64be`, as an old server
    // left it, written through a raw RocksDB handle.
    s.closed(|dir| {
        let db = rocksdb::DB::open_default(dir).expect("raw open");
        let mut key = vec![b'v'];
        key.extend_from_slice(&REL.to_be_bytes());
        key.extend_from_slice(b"a row");
        db.put(key, 1i64.to_be_bytes()).expect("put");
    });
    let err = s
        .store()
        .scan_committed_rows(REL, |_| {})
        .expect_err("the old layout must be refused");
    assert!(err.to_string().contains("unreadable"), "{err}");
}

#[test]
fn a_failure_reads_back_as_recorded_with_or_without_its_epoch() {
    let s = TempStore::new("failure");
    let failure = |epoch| StoredFailure {
        log_position: 17,
        epoch,
        restartable: true,
        cause: Some(2),
        reason: "it failed".into(),
    };
    let mut batch = CheckpointBatch::default();
    batch.set_failure(REL, Some(&failure(Some(9))));
    batch.set_failure(REL + 1, Some(&failure(None)));
    batch.finish(1, 0, 1);
    s.store().commit_checkpoint(&batch).expect("commit");
    assert_eq!(
        s.store().failure(REL).expect("read"),
        Some(failure(Some(9)))
    );
    assert_eq!(
        s.store().failure(REL + 1).expect("read"),
        Some(failure(None))
    );
}
