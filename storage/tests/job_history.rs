//! A job's history: stored as it changes, read back at start, dropped with
//! its relation.

use eddy_storage::{Store, StoredJob};

#[test]
fn job_histories_read_back_until_their_relation_is_dropped() {
    let dir = std::env::temp_dir().join(format!("eddy-job-history-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Store::open(&dir).expect("open store");
    let failed = StoredJob {
        restarts: 3,
        last_error: Some((1_764_900_000_000, "it failed".into())),
    };
    let fresh = StoredJob::default();
    store.put_job(7, &failed).expect("put");
    store.put_job(8, &fresh).expect("put");
    assert_eq!(
        store.jobs().expect("jobs"),
        [(7, failed.clone()), (8, fresh)]
    );
    store.drop_relation(8).expect("drop");
    assert_eq!(store.jobs().expect("jobs"), [(7, failed)]);
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}
