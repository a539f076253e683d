//! Watermark alignment: which split waits for which, and when it is woken.

use std::sync::Arc;

use eddy_executor::source::{IDLE_AFTER, SplitAlignment};

/// `splits` splits, each allowed to lead by `max_drift`.
fn aligned(splits: usize, max_drift: i64) -> SplitAlignment {
    let alignment = SplitAlignment::default();
    for _ in 0..splits {
        alignment.add_split(max_drift);
    }
    alignment
}

#[test]
fn a_split_waits_only_for_splits_reading_behind_it() {
    let alignment = aligned(3, 10);
    assert!(
        !alignment.is_ahead(0),
        "no watermark yet: nothing to wait for"
    );
    alignment.read(0, Some(100));
    assert!(
        !alignment.is_ahead(0),
        "splits 1 and 2 have no watermark yet: nothing to wait for"
    );
    alignment.read(1, Some(95));
    alignment.read(2, Some(92));
    assert!(!alignment.is_ahead(0), "within the drift");
    alignment.read(0, Some(102));
    assert!(!alignment.is_ahead(0), "10 ahead of split 2");
    alignment.read(0, Some(103));
    assert!(
        !alignment.is_ahead(0),
        "11: the drift and its last read's rise"
    );
    alignment.read(0, Some(104));
    assert!(alignment.is_ahead(0), "12 ahead of split 2");
    assert!(!alignment.is_ahead(2));
    alignment.finished(2);
    assert!(!alignment.is_ahead(0), "a finished split holds nobody back");
    // A watermark never goes back.
    alignment.read(1, Some(50));
    assert!(!alignment.is_ahead(0));
}

#[test]
fn a_split_idle_for_a_while_holds_nobody_back() {
    let alignment = aligned(2, 0);
    alignment.read(0, Some(10));
    alignment.read(1, Some(0));
    assert!(alignment.is_ahead(0));
    std::thread::sleep(IDLE_AFTER + std::time::Duration::from_millis(100));
    alignment.read(0, Some(11));
    assert!(!alignment.is_ahead(0), "split 1 read nothing lately");
    alignment.read(1, Some(1));
    assert!(alignment.is_ahead(0), "split 1 reads again");
    // Busy reading (its rows wait to go out), it is slow, not idle.
    alignment.reading(1);
    std::thread::sleep(IDLE_AFTER + std::time::Duration::from_millis(100));
    assert!(alignment.is_ahead(0), "split 1 is still reading");
}

#[test]
fn a_lead_of_one_chunk_is_allowed() {
    let alignment = aligned(2, 5);
    alignment.read(0, Some(0));
    alignment.read(1, Some(0));
    alignment.read(0, Some(20));
    assert!(!alignment.is_ahead(0), "a chunk spans 20");
    alignment.read(0, Some(40));
    assert!(alignment.is_ahead(0), "two chunks ahead");
}

#[tokio::test]
async fn a_rise_wakes_the_waiting_split() {
    let alignment = Arc::new(aligned(2, 0));
    alignment.read(0, Some(10));
    alignment.read(1, Some(5));
    let advanced = alignment.advanced();
    assert!(alignment.is_ahead(0));
    let other = alignment.clone();
    tokio::spawn(async move { other.read(1, Some(10)) });
    advanced.await;
    assert!(!alignment.is_ahead(0));
}

#[test]
fn each_split_leads_by_its_own_drift() {
    // Two sources in one group: one allows a lead of 10, one of none.
    let alignment = SplitAlignment::default();
    let (lenient, strict) = (alignment.add_split(10), alignment.add_split(0));
    alignment.read(lenient, Some(0));
    alignment.read(strict, Some(0));
    alignment.read(lenient, Some(1));
    alignment.read(strict, Some(1));
    alignment.read(lenient, Some(6));
    assert!(!alignment.is_ahead(lenient), "5 ahead, within its 10");
    for w in 2..=13 {
        alignment.read(strict, Some(w));
    }
    assert!(
        alignment.is_ahead(strict),
        "7 ahead: more than its 0 and the largest rise (5)"
    );
    assert!(!alignment.is_ahead(lenient));
}
