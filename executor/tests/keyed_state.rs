//! Keyed state on the `rocksdb` backend, against a real store: what differs
//! from the store stays in memory; recovery reads keys on demand.

use std::sync::Arc;

use eddy_executor::checkpoint::{FragmentCheckpoint, StateWrite};
use eddy_executor::keyed_state::{KeyedState, StateBackend, StateConfig, StoreTable};
use eddy_storage::{CheckpointBatch, Store};
use tokio::sync::watch;

const RELATION: u32 = 7;

/// A stored value, as the tests encode it.
fn decode(value: &[u8]) -> eddy_executor::Result<u64> {
    Ok(u64::from_be_bytes(value.try_into().expect("8 bytes")))
}

struct Harness {
    store: Arc<Store>,
    durable: watch::Sender<u64>,
    state: KeyedState<u64>,
    _dir: std::path::PathBuf,
}

impl Harness {
    /// Keyed state on the `rocksdb` backend with no cache.
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("eddy-keyed-state-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Arc::new(Store::open(&dir).expect("store"));
        Self::on(store, dir, 0)
    }

    /// The same state, on `store`, whose last durable epoch is `durable`.
    fn on(store: Arc<Store>, dir: std::path::PathBuf, durable: u64) -> Self {
        let durable = watch::channel(durable).0;
        let mut state = KeyedState::default();
        state.place().configure(StateConfig {
            backend: StateBackend::Rocksdb,
            cache_bytes: 0,
        });
        state.place().attach(StoreTable::new(
            store.clone(),
            RELATION,
            0,
            0,
            durable.subscribe(),
        ));
        Self {
            store,
            durable,
            state,
            _dir: dir,
        }
    }

    /// Ends `epoch` and takes its checkpoint's writes.
    fn stage(&mut self, epoch: u64) -> FragmentCheckpoint {
        self.state.end_epoch(epoch);
        let mut checkpoint = FragmentCheckpoint::default();
        self.state
            .checkpoint(&mut checkpoint.scope(0, 0), |v| v.to_be_bytes().to_vec());
        checkpoint
    }

    /// Ends `epoch` and stages its checkpoint; returns the batch.
    fn checkpoint(&mut self, epoch: u64) -> CheckpointBatch {
        Self::batch(&self.stage(epoch), epoch)
    }

    /// The batch of epoch `epoch`'s staged `checkpoint`.
    fn batch(checkpoint: &FragmentCheckpoint, epoch: u64) -> CheckpointBatch {
        let mut batch = CheckpointBatch::default();
        for write in checkpoint.writes() {
            write.write_to(&mut batch, RELATION);
        }
        batch.finish(epoch, 0, 1);
        batch
    }

    /// Makes `batch` durable.
    fn commit(&self, batch: &CheckpointBatch) {
        self.store.commit_checkpoint(batch).expect("commit");
        self.durable.send_replace(batch.epoch());
    }

    /// Stores keys `0..n` (big-endian u16), each with its number as its
    /// value, in a durable checkpoint 1; returns them.
    fn store_keys(&mut self, n: u16) -> Vec<[u8; 2]> {
        let keys: Vec<[u8; 2]> = (0..n).map(u16::to_be_bytes).collect();
        self.state
            .load(keys.iter().map(|k| k.as_slice()), |_| Ok(0))
            .expect("load");
        for (i, key) in keys.iter().enumerate() {
            self.state.insert(key.as_slice().into(), i as u64);
        }
        let batch = self.checkpoint(1);
        self.commit(&batch);
        keys
    }

    fn get(&mut self, key: &[u8]) -> Option<u64> {
        self.state.load([key], decode).expect("load");
        self.state.get(key).copied()
    }
}

#[test]
fn what_differs_from_the_store_stays_in_memory() {
    let mut h = Harness::new("pinned");
    h.state.load([b"a".as_slice()], |_| Ok(0)).expect("load");
    h.state.insert(b"a".as_slice().into(), 1);
    let first = h.checkpoint(1);
    // Not durable yet: the only copy is in memory.
    assert_eq!(h.state.cached(), 1);
    h.commit(&first);
    let second = h.checkpoint(2);
    h.commit(&second);
    let _ = h.checkpoint(3);
    // Durable and unchanged: evicted, and read back when used.
    assert_eq!(h.state.cached(), 0);
    assert_eq!(h.get(b"a"), Some(1));

    // A removal whose checkpoint is not durable must not let the
    // store's old value back in.
    assert_eq!(h.state.remove(b"a"), Some(1));
    let removed = h.checkpoint(4);
    let _ = h.checkpoint(5);
    assert_eq!(h.get(b"a"), None);
    h.commit(&removed);
    let _ = h.checkpoint(6);
    assert_eq!(h.get(b"a"), None);
    assert_eq!(h.state.len(), 0);

    // Removed, put back, removed again: the first removal becoming
    // durable must not let the put back in while the second is not.
    h.state.insert(b"a".as_slice().into(), 2);
    let put = h.checkpoint(7);
    h.commit(&put);
    assert_eq!(h.state.remove(b"a"), Some(2));
    let first_removal = h.checkpoint(8);
    h.state.insert(b"a".as_slice().into(), 3);
    let put_back = h.checkpoint(9);
    assert_eq!(h.state.remove(b"a"), Some(3));
    let second_removal = h.checkpoint(10);
    h.commit(&first_removal);
    let _ = h.checkpoint(11);
    h.commit(&put_back);
    let _ = h.checkpoint(12);
    assert_eq!(h.get(b"a"), None);
    h.commit(&second_removal);
    let _ = h.checkpoint(13);
    assert_eq!(h.get(b"a"), None);
}

#[test]
fn a_key_that_comes_and_goes_between_checkpoints_writes_nothing() {
    let mut h = Harness::new("transient");
    h.state.load([b"a".as_slice()], |_| Ok(0)).expect("load");
    h.state.insert(b"a".as_slice().into(), 1);
    assert_eq!(h.state.remove(b"a"), Some(1));
    assert!(h.stage(1).writes().is_empty());

    // One that reached the store is deleted from it.
    h.state.insert(b"a".as_slice().into(), 2);
    assert!(matches!(
        h.stage(2).writes(),
        [StateWrite::Put(..), StateWrite::Put(..)]
    ));
    assert_eq!(h.state.remove(b"a"), Some(2));
    assert!(matches!(
        h.stage(3).writes(),
        [StateWrite::Delete(..), StateWrite::Put(..)]
    ));
}

#[test]
fn keys_removed_below_a_bound_leave_the_store_in_one_range_deletion() {
    let mut h = Harness::new("below");
    let keys = h.store_keys(100);

    // A key that comes and goes between checkpoints deletes nothing.
    let bound = 50u16.to_be_bytes();
    let transient = [0u8, 10, 1];
    h.state
        .load([transient.as_slice()], |_| Ok(0))
        .expect("load");
    h.state.insert(transient.as_slice().into(), 7);
    assert_eq!(h.state.remove_below(&bound, &transient), Some(7));
    assert!(h.stage(2).writes().is_empty());

    let below = &keys[..50];
    h.state
        .load(below.iter().map(|k| k.as_slice()), decode)
        .expect("load");
    for (i, key) in below.iter().enumerate() {
        assert_eq!(h.state.remove_below(&bound, key), Some(i as u64));
    }
    let staged = h.stage(3);
    assert!(matches!(
        staged.writes(),
        [StateWrite::DeleteRange(..), StateWrite::Put(..)]
    ));
    h.commit(&Harness::batch(&staged, 3));
    // Removed, not yet evicted: still absent.
    assert_eq!(h.get(&keys[0]), None);

    let mut restored = Harness::on(h.store.clone(), h._dir.clone(), 3);
    restored.state.restore(decode, None).expect("restore");
    assert_eq!(restored.state.len(), 50);
    for (i, key) in keys.iter().enumerate() {
        let expected = (i >= 50).then_some(i as u64);
        assert_eq!(restored.get(key), expected, "key {i}");
    }
}

#[test]
fn restore_reads_the_count_and_then_keys_on_demand() {
    let mut h = Harness::new("restore");
    let keys = h.store_keys(100);

    let mut restored = Harness::on(h.store.clone(), h._dir.clone(), 1);
    restored.state.restore(decode, None).expect("restore");
    assert_eq!((restored.state.len(), restored.state.cached()), (100, 0));
    assert_eq!(restored.get(&keys[42]), Some(42));
    assert_eq!(restored.get(b"missing"), None);

    // The memory backend reads everything back.
    let mut in_memory = KeyedState::<u64>::default();
    in_memory.place().attach(StoreTable::new(
        h.store.clone(),
        RELATION,
        0,
        0,
        restored.durable.subscribe(),
    ));
    in_memory.restore(decode, None).expect("restore");
    assert_eq!((in_memory.len(), in_memory.cached()), (100, 100));
    assert_eq!(in_memory.get(&keys[99]), Some(&99));
}
