//! State TTL's index: what expires when.

use std::time::Duration;

use eddy_executor::state_ttl::StateTtl;

#[test]
fn entries_expire_a_ttl_after_their_last_change() {
    let mut ttl = StateTtl::starting_at(Duration::from_nanos(10), 100);
    let a = ttl.touch(&"a", None);
    let b = ttl.touch(&"b", None);
    assert_eq!((a, b), (100, 100));
    ttl.advance(105);
    let a = ttl.touch(&"a", Some(a));
    assert_eq!(a, 105);
    assert!(
        ttl.advance(110).is_empty(),
        "exactly the TTL is not yet past"
    );
    assert_eq!(ttl.advance(111), vec!["b"]);
    ttl.forget(&"a", a);
    assert!(ttl.advance(1000).is_empty());
}

#[test]
fn time_never_goes_back() {
    let mut ttl = StateTtl::starting_at(Duration::from_nanos(10), 100);
    ttl.advance(50);
    assert_eq!(ttl.touch(&1, None), 100);
}
