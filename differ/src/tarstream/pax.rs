//! PAX extended headers (`x` entries): records parsed by their length prefix, so values may
//! hold any byte (newlines included, as binary `security.capability` xattrs do), with Go's
//! `archive/tar` rules for which record wins.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use super::bad;
use crate::{Error, Result};

/// What one PAX header (`x`) says; a later one replaces it, as in Go's reader.
#[derive(Default)]
pub(super) struct Pax {
    pub path: Option<Vec<u8>>,
    pub link: Option<Vec<u8>>,
    pub size: Option<u64>,
    pub uid: Option<i64>,
    pub gid: Option<i64>,
    pub mtime: Option<(i64, i64)>,
    pub xattrs: BTreeMap<OsString, Vec<u8>>,
}

/// Parses PAX records (`LENGTH KEY=VALUE\n`, LENGTH counting the whole record) as Go does:
/// a later record for a key wins, an empty value keeps the header's own field (xattrs
/// excepted: containerd sets them from the raw records), a NUL in a key or a path is an error.
pub(super) fn parse_pax(mut data: &[u8]) -> Result<Pax> {
    let mut pax = Pax::default();
    while !data.is_empty() {
        // Some writers pad the records with NULs.
        if data.iter().all(|b| *b == 0) {
            break;
        }
        let space = data
            .iter()
            .position(|b| *b == b' ')
            .ok_or_else(|| bad("PAX record without a length"))?;
        let len: usize = std::str::from_utf8(&data[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("PAX record length"))?;
        if len < 5 || len <= space + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err(bad("malformed PAX record"));
        }
        let record = &data[space + 1..len - 1];
        data = &data[len..];
        let eq = record
            .iter()
            .position(|b| *b == b'=')
            .ok_or_else(|| bad("PAX record without '='"))?;
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        if key.is_empty() || key.contains(&0) {
            return Err(bad("PAX record with a bad key"));
        }
        if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
            pax.xattrs
                .insert(OsString::from_vec(name.to_vec()), value.to_vec());
            continue;
        }
        if key.starts_with(b"GNU.sparse.") {
            return Err(Error::NotImplemented(
                "PAX sparse files (GNU.sparse.*) in a layer".into(),
            ));
        }
        if matches!(key, b"path" | b"linkpath") && value.contains(&0) {
            return Err(bad("NUL in a PAX path"));
        }
        if value.is_empty() {
            continue;
        }
        let decimal = |what: &str| -> Result<i64> {
            std::str::from_utf8(value)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad(format!("PAX {what} {:?}", String::from_utf8_lossy(value))))
        };
        match key {
            b"path" => pax.path = Some(value.to_vec()),
            b"linkpath" => pax.link = Some(value.to_vec()),
            b"size" => {
                pax.size =
                    Some(u64::try_from(decimal("size")?).map_err(|_| bad("negative PAX size"))?);
            }
            b"uid" => pax.uid = Some(decimal("uid")?),
            b"gid" => pax.gid = Some(decimal("gid")?),
            b"mtime" => pax.mtime = Some(pax_time(value).ok_or_else(|| bad("PAX mtime"))?),
            // atime, ctime, uname, gname, comment, charset, ...: not applied.
            _ => {}
        }
    }
    Ok(pax)
}

/// Parses a PAX time (`seconds[.fraction]`, possibly negative) as (seconds, nanoseconds).
fn pax_time(v: &[u8]) -> Option<(i64, i64)> {
    let s = std::str::from_utf8(v).ok()?;
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits: String = frac.chars().take(9).collect();
    let nanos = if digits.is_empty() {
        0
    } else {
        digits.parse::<i64>().ok()? * 10i64.pow(9 - digits.len() as u32)
    };
    Some((secs, if s.starts_with('-') { -nanos } else { nanos }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_records_are_split_by_length() {
        let value = b"a\nb=c";
        let rec = |k: &str, v: &[u8]| {
            let body = [k.as_bytes(), b"=", v, b"\n"].concat();
            // The length counts its own digits.
            let len = (1..)
                .map(|digits| body.len() + 1 + digits)
                .find(|l| l.to_string().len() + 1 + body.len() == *l)
                .unwrap();
            [len.to_string().as_bytes(), b" ", &body].concat()
        };
        let data = [
            rec("SCHILY.xattr.security.capability", value),
            rec("path", b"x/y"),
            rec("size", b"12"),
        ]
        .concat();
        let p = parse_pax(&data).unwrap();
        assert_eq!(p.path.as_deref(), Some(&b"x/y"[..]));
        assert_eq!(p.size, Some(12));
        assert_eq!(
            p.xattrs.into_iter().collect::<Vec<_>>(),
            vec![(OsString::from("security.capability"), value.to_vec())]
        );
        assert!(parse_pax(b"5 a=b\n").is_err());
        assert!(parse_pax(b"99 path=x\n").is_err());
        // An empty value keeps the header's field.
        assert_eq!(parse_pax(b"8 path=\n").unwrap().path, None);
    }

    #[test]
    fn pax_times() {
        assert_eq!(
            pax_time(b"1700000000.5"),
            Some((1_700_000_000, 500_000_000))
        );
        assert_eq!(pax_time(b"12"), Some((12, 0)));
        assert_eq!(pax_time(b"1.123456789123"), Some((1, 123_456_789)));
        assert_eq!(pax_time(b"x"), None);
        assert_eq!(pax_time(b"1.x"), None);
    }
}
