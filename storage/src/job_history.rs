//! What `SHOW JOBS` keeps of a view's or sink's pipeline across restarts of
//! the server: how often it restarted and why it last failed.
//!
//! ```text
//! j <rel:u32be> -> <restarts:u64be> [<failed at, ms since the Unix epoch:u64be> <reason>]
//! ```

use crate::checkpoint::read_u64;

/// A job's history as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredJob {
    /// Restarts since the job was created.
    pub restarts: u64,
    /// When it last failed (milliseconds since the Unix epoch), and why.
    pub last_error: Option<(u64, String)>,
}

impl StoredJob {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut v = self.restarts.to_be_bytes().to_vec();
        if let Some((at, reason)) = &self.last_error {
            v.extend_from_slice(&at.to_be_bytes());
            v.extend_from_slice(reason.as_bytes());
        }
        v
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        let restarts = read_u64(bytes.get(..8)?)?;
        let last_error = match bytes.get(8..16) {
            Some(at) => Some((
                read_u64(at)?,
                String::from_utf8_lossy(bytes.get(16..)?).into_owned(),
            )),
            None => None,
        };
        Some(Self {
            restarts,
            last_error,
        })
    }
}
