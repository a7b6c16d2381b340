//! `sha256:<hex>` content digests, and a hasher that counts bytes as it goes.

use std::fmt;

use sha2::{Digest as _, Sha256};

use crate::{Error, Result};

/// A validated `sha256:` digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Digest(String);

impl Digest {
    /// Parses `sha256:<64 lower-case hex>`; other algorithms are not implemented.
    pub fn parse(s: &str) -> Result<Self> {
        let Some((alg, hex)) = s.split_once(':') else {
            return Err(Error::InvalidArgument(format!(
                "digest {s:?}: no algorithm"
            )));
        };
        if alg != "sha256" {
            return Err(Error::NotImplemented(format!("digest algorithm {alg:?}")));
        }
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(Error::InvalidArgument(format!(
                "digest {s:?}: bad sha256 hex"
            )));
        }
        Ok(Digest(s.to_string()))
    }

    /// The hex part.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    /// The whole `sha256:<hex>` string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// SHA-256 plus a byte count.
#[derive(Default, Clone)]
pub struct Hasher {
    sha: Sha256,
    len: u64,
}

impl Hasher {
    /// Feeds bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.sha.update(data);
        self.len += data.len() as u64;
    }

    /// The digest and byte count.
    pub fn finish(self) -> (Digest, u64) {
        let sum = self.sha.finalize();
        let mut hex = String::with_capacity(64 + 7);
        hex.push_str("sha256:");
        for b in sum.iter() {
            hex.push_str(&format!("{b:02x}"));
        }
        (Digest(hex), self.len)
    }
}

/// A writer that hashes what passes through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Hasher,
}

impl<W> HashingWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Hasher::default(),
        }
    }

    /// The inner writer, the digest and count of everything written.
    pub fn finish(self) -> (W, Digest, u64) {
        let (d, n) = self.hasher.finish();
        (self.inner, d, n)
    }
}

impl<W: std::io::Write> std::io::Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_known_value() {
        let mut h = Hasher::default();
        h.update(b"abc");
        let (d, n) = h.finish();
        assert_eq!(n, 3);
        assert_eq!(
            d.hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(Digest::parse(d.as_str()).unwrap(), d);
    }

    #[test]
    fn rejects_bad_digests() {
        assert!(matches!(
            Digest::parse("sha256:abc"),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            Digest::parse("nocolon"),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            Digest::parse(&format!("sha512:{}", "a".repeat(128))),
            Err(Error::NotImplemented(_))
        ));
        assert!(Digest::parse(&format!("sha256:{}", "A".repeat(64))).is_err());
    }
}
