//! Hash maps for state keyed by encoded rows. They hash with foldhash,
//! seeded randomly per map, instead of SipHash: hashing keys is on every
//! row's path, and SipHash showed up in profiles.

/// A hash map for state.
pub type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// A hash set for state.
pub type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
