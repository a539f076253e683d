//! A small binary encoding for state values: fixed-width big-endian numbers
//! and length-prefixed byte strings, read back in the order written.

use crate::error::{ExecutorError, Result};

/// Builds one state value.
#[derive(Debug, Default)]
pub struct ValueWriter(Vec<u8>);

impl ValueWriter {
    /// An empty value.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one byte.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }

    /// Appends a u32.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// Appends an i64.
    pub fn i64(&mut self, v: i64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// Appends an i128.
    pub fn i128(&mut self, v: i128) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// Appends an f64, bit for bit.
    pub fn f64(&mut self, v: f64) -> &mut Self {
        self.0.extend_from_slice(&v.to_bits().to_be_bytes());
        self
    }

    /// Appends a byte string, length first.
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.u32(v.len() as u32);
        self.0.extend_from_slice(v);
        self
    }

    /// Appends an optional i64.
    pub fn opt_i64(&mut self, v: Option<i64>) -> &mut Self {
        match v {
            Some(v) => self.u8(1).i64(v),
            None => self.u8(0),
        }
    }

    /// Appends an optional byte string.
    pub fn opt_bytes(&mut self, v: Option<&[u8]>) -> &mut Self {
        match v {
            Some(v) => self.u8(1).bytes(v),
            None => self.u8(0),
        }
    }

    /// The value.
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.0)
    }
}

/// Reads a value written by [`ValueWriter`].
#[derive(Debug)]
pub struct ValueReader<'a> {
    rest: &'a [u8],
}

fn corrupt(what: &str) -> ExecutorError {
    ExecutorError::CorruptState(format!("a checkpointed value ends inside its {what}"))
}

impl<'a> ValueReader<'a> {
    /// Reads `bytes` from the start.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    fn take<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let (head, rest) = self.rest.split_at_checked(N).ok_or_else(|| corrupt(what))?;
        self.rest = rest;
        head.try_into().map_err(|_| corrupt(what))
    }

    /// One byte.
    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.take::<1>("byte")?[0])
    }

    /// A u32.
    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.take("u32")?))
    }

    /// An i64.
    pub fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_be_bytes(self.take("i64")?))
    }

    /// An i128.
    pub fn i128(&mut self) -> Result<i128> {
        Ok(i128::from_be_bytes(self.take("i128")?))
    }

    /// An f64.
    pub fn f64(&mut self) -> Result<f64> {
        Ok(f64::from_bits(u64::from_be_bytes(self.take("f64")?)))
    }

    /// A byte string.
    pub fn bytes(&mut self) -> Result<&'a [u8]> {
        let len = self.u32()? as usize;
        let (head, rest) = self
            .rest
            .split_at_checked(len)
            .ok_or_else(|| corrupt("byte string"))?;
        self.rest = rest;
        Ok(head)
    }

    /// An optional i64.
    pub fn opt_i64(&mut self) -> Result<Option<i64>> {
        Ok(match self.u8()? {
            0 => None,
            _ => Some(self.i64()?),
        })
    }

    /// An optional byte string.
    pub fn opt_bytes(&mut self) -> Result<Option<&'a [u8]>> {
        Ok(match self.u8()? {
            0 => None,
            _ => Some(self.bytes()?),
        })
    }

    /// What is left unread.
    pub fn rest(&self) -> &'a [u8] {
        self.rest
    }
}
