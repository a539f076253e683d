//! Eddy's end-to-end tests: every test talks to a real `eddy` process over
//! the Postgres protocol. One test binary, one module per area.

mod disk_full;
mod extended;
mod failures;
mod kafka;
mod nexmark;
mod oracle;
mod psql;
mod recovery;
mod restart;
mod slt;
