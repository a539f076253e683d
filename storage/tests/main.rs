//! Storage tests, against a real RocksDB in a temporary directory.

mod row_parts;
