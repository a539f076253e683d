//! Restart strategies: when a failed pipeline restarts, and when it stays failed.

use std::time::{Duration, Instant};

use eddy_executor::RestartStrategy;

fn failures(offsets_ms: &[u64]) -> Vec<Instant> {
    let start = Instant::now();
    offsets_ms
        .iter()
        .map(|ms| start + Duration::from_millis(*ms))
        .collect()
}

#[test]
fn fixed_delay_allows_its_attempts_then_gives_up() {
    let s = RestartStrategy::parse("fixed-delay(attempts = 2, delay = 250ms)").unwrap();
    assert_eq!(
        s.delay(&failures(&[0]), 0.0),
        Some(Duration::from_millis(250))
    );
    assert!(s.delay(&failures(&[0, 1]), 0.0).is_some());
    assert_eq!(s.delay(&failures(&[0, 1, 2]), 0.0), None);
}

#[test]
fn failure_rate_counts_only_the_last_interval() {
    let s =
        RestartStrategy::parse("failure-rate(max_failures = 2, interval = 1s, delay = 0)").unwrap();
    assert!(s.delay(&failures(&[0, 500]), 0.0).is_some());
    assert_eq!(s.delay(&failures(&[0, 400, 900]), 0.0), None);
    // The first failure fell out of the window.
    assert!(s.delay(&failures(&[0, 900, 1500]), 0.0).is_some());
}

#[test]
fn exponential_delay_grows_to_its_max_within_its_jitter() {
    let s = RestartStrategy::parse(
        "exponential-delay(initial = 100ms, max = 1s, multiplier = 3, jitter = 0.5)",
    )
    .unwrap();
    let at = |n: usize, spread: f64| s.delay(&failures(&vec![0; n]), spread).unwrap().as_millis();
    assert_eq!(
        (at(1, 0.0), at(2, 0.0), at(3, 0.0), at(9, 0.0)),
        (100, 300, 900, 1000)
    );
    assert_eq!((at(2, -1.0), at(2, 1.0)), (150, 450));
}

#[test]
fn strategies_print_as_they_parse() {
    for text in [
        "none",
        "fixed-delay(attempts = 3, delay = 1000ms)",
        "failure-rate(max_failures = 3, interval = 60000ms, delay = 1000ms)",
        "exponential-delay(initial = 1000ms, max = 60000ms, multiplier = 2, jitter = 0.1)",
    ] {
        assert_eq!(RestartStrategy::parse(text).unwrap().to_string(), text);
    }
    assert!(RestartStrategy::parse("fixed-delay(tries = 3)").is_err());
    assert!(RestartStrategy::parse("sometimes").is_err());
}
