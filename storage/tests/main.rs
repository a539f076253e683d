//! Storage tests, against a real RocksDB in a temporary directory.

mod job_history;
mod row_parts;
