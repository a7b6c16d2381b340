//! containerd's filter language (`pkg/filters`) for List: a request holds several filter
//! strings (OR); each is `,`-separated selectors (AND); a selector is a field path with an
//! optional operator (`==`, `!=`, `~=`) and value. Field names may be Go-quoted strings,
//! values may be quoted, and `~=` values may be quoted with `/.../` or `|...|`.
//!
//! What a field path means is up to the filtered type ([`Adaptor`], as containerd's
//! adaptors): snapshots here, images, containers, content and leases in the daemon.

use std::borrow::Cow;

use regex::Regex;

use crate::{Error, Info, Result};

/// Parsed filters: an item matches when any alternative matches.
#[derive(Debug, Default)]
pub struct Filters {
    alternatives: Vec<Vec<Selector>>,
}

#[derive(Debug)]
struct Selector {
    fieldpath: Vec<String>,
    op: Op,
}

#[derive(Debug)]
enum Op {
    Present,
    Equal(String),
    NotEqual(String),
    Matches(Regex),
}

impl Filters {
    /// Parses every filter string; no strings, or an empty one, means "match everything"
    /// (clients send `[""]`: ctr's progress polls list every write that way).
    pub fn parse<S: AsRef<str>>(filters: &[S]) -> Result<Self> {
        let alternatives: Vec<Vec<Selector>> = filters
            .iter()
            .map(|f| match f.as_ref() {
                "" => Ok(Vec::new()),
                f => Parser::new(f).selectors(),
            })
            .collect::<Result<_>>()?;
        Ok(Filters { alternatives })
    }

    /// Whether `item` matches.
    pub fn matches(&self, item: &impl Adaptor) -> bool {
        self.alternatives.is_empty()
            || self
                .alternatives
                .iter()
                .any(|sels| sels.iter().all(|s| s.matches(item)))
    }
}

/// The fields a filter can select on, by field path (`name`, `labels.<key>`, ...).
pub trait Adaptor {
    /// The value at `path`, or `None` when the field is absent.
    fn field(&self, path: &[String]) -> Option<Cow<'_, str>>;
}

impl Selector {
    fn matches(&self, item: &impl Adaptor) -> bool {
        let value = item.field(&self.fieldpath);
        let value = value.as_deref();
        match &self.op {
            Op::Present => value.is_some(),
            Op::Equal(v) => value == Some(v.as_str()),
            // Like containerd: an absent field compares as the empty string.
            Op::NotEqual(v) => value.unwrap_or("") != v,
            Op::Matches(re) => value.is_some_and(|s| re.is_match(s)),
        }
    }
}

/// A snapshot's fields, as containerd's snapshot adaptor exposes them.
impl Adaptor for Info {
    fn field(&self, path: &[String]) -> Option<Cow<'_, str>> {
        let value = match path {
            [f] if f == "name" => (!self.name.is_empty()).then_some(self.name.as_str()),
            [f] if f == "parent" => Some(self.parent.as_str()),
            [f] if f == "kind" => Some(self.kind.as_str()),
            [f, key] if f == "labels" => self.labels.get(key).map(String::as_str),
            _ => None,
        };
        value.map(Cow::Borrowed)
    }
}

struct Parser<'a> {
    input: &'a str,
    chars: Vec<char>,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn new(input: &'a str) -> Self {
        Parser {
            input,
            chars: input.chars().collect(),
            pos: 0,
        }
    }

    fn error(&self, what: &str) -> Error {
        Error::InvalidArgument(format!(
            "filter {:?}: {what} at position {}",
            self.input, self.pos
        ))
    }

    fn skip_space(&mut self) {
        while self.chars.get(self.pos).is_some_and(|c| c.is_whitespace()) {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<char> {
        self.skip_space();
        self.chars.get(self.pos).copied()
    }

    fn selectors(mut self) -> Result<Vec<Selector>> {
        let mut out = vec![self.selector()?];
        loop {
            match self.peek() {
                None => return Ok(out),
                Some(',') => {
                    self.pos += 1;
                    out.push(self.selector()?);
                }
                Some(_) => return Err(self.error("expected ',' or end of filter")),
            }
        }
    }

    fn selector(&mut self) -> Result<Selector> {
        let mut fieldpath = vec![self.field()?];
        while self.peek() == Some('.') {
            self.pos += 1;
            fieldpath.push(self.field()?);
        }
        let op = match self.operator() {
            None => Op::Present,
            Some("==") => Op::Equal(self.value(false)?),
            Some("!=") => Op::NotEqual(self.value(false)?),
            Some(_) => {
                let pattern = self.value(true)?;
                let re = Regex::new(&pattern)
                    .map_err(|e| self.error(&format!("bad regular expression: {e}")))?;
                Op::Matches(re)
            }
        };
        Ok(Selector { fieldpath, op })
    }

    fn operator(&mut self) -> Option<&'static str> {
        self.peek()?;
        let two: String = self.chars[self.pos..].iter().take(2).collect();
        let op = ["==", "!=", "~="].into_iter().find(|op| *op == two)?;
        self.pos += 2;
        Some(op)
    }

    fn field(&mut self) -> Result<String> {
        match self.peek() {
            Some('"') => self.quoted('"'),
            Some(c) if is_field_char(c) => {
                let start = self.pos;
                while self.chars.get(self.pos).copied().is_some_and(is_field_char) {
                    self.pos += 1;
                }
                Ok(self.chars[start..self.pos].iter().collect())
            }
            _ => Err(self.error("expected a field name")),
        }
    }

    fn value(&mut self, alt_quotes: bool) -> Result<String> {
        match self.peek() {
            Some('"') => self.quoted('"'),
            Some(q @ ('/' | '|')) if alt_quotes => self.quoted(q),
            Some(c) if is_value_char(c) => {
                let start = self.pos;
                while self.chars.get(self.pos).copied().is_some_and(is_value_char) {
                    self.pos += 1;
                }
                Ok(self.chars[start..self.pos].iter().collect())
            }
            _ => Err(self.error("expected a value")),
        }
    }

    /// A string between `quote`s, with Go escapes (`\"`, `\\`, `\n`, `\t`, `\xNN`, ...).
    fn quoted(&mut self, quote: char) -> Result<String> {
        self.pos += 1;
        let mut out = String::new();
        loop {
            let Some(c) = self.chars.get(self.pos).copied() else {
                return Err(self.error("unterminated quoted string"));
            };
            self.pos += 1;
            if c == quote {
                return Ok(out);
            }
            if c != '\\' {
                out.push(c);
                continue;
            }
            let Some(e) = self.chars.get(self.pos).copied() else {
                return Err(self.error("unterminated escape"));
            };
            self.pos += 1;
            match e {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                'a' => out.push('\x07'),
                'b' => out.push('\x08'),
                'f' => out.push('\x0c'),
                'v' => out.push('\x0b'),
                'x' => {
                    let hex: String = self.chars[self.pos..].iter().take(2).collect();
                    let v =
                        u8::from_str_radix(&hex, 16).map_err(|_| self.error("bad \\x escape"))?;
                    self.pos += 2;
                    out.push(char::from(v));
                }
                c if c == quote || c == '\\' || c == '"' || c == '\'' => out.push(c),
                // Inside /.../ or |...| a backslash before anything else is kept, so regular
                // expression escapes like \d survive.
                c if quote != '"' => {
                    out.push('\\');
                    out.push(c);
                }
                _ => return Err(self.error("unknown escape")),
            }
        }
    }
}

fn is_field_char(c: char) -> bool {
    c == '_' || c.is_ascii_alphanumeric()
}

fn is_value_char(c: char) -> bool {
    c != ',' && !c.is_whitespace() && !c.is_control()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::SystemTime;

    use super::*;
    use crate::Kind;

    fn info(name: &str, parent: &str, kind: Kind, labels: &[(&str, &str)]) -> Info {
        Info {
            name: name.into(),
            parent: parent.into(),
            kind,
            created: SystemTime::UNIX_EPOCH,
            updated: SystemTime::UNIX_EPOCH,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    fn m(filters: &[&str], i: &Info) -> bool {
        Filters::parse(filters).unwrap().matches(i)
    }

    #[test]
    fn testsuite_walk_filters() {
        let gc = "containerd.io/gc.root";
        let a = info("a-wl", "p", Kind::Active, &[(gc, "check-walk"), ("l", "1")]);
        let p = info("p", "", Kind::Committed, &[(gc, "check-walk")]);
        let v = info("v", "p", Kind::View, &[("l", "2")]);
        let f = r#"labels."containerd.io/gc.root"==check-walk"#;
        assert!(m(&[f], &a) && m(&[f], &p) && !m(&[f], &v));
        let f = r#"kind==active,labels."containerd.io/gc.root"==check-walk"#;
        assert!(m(&[f], &a) && !m(&[f], &p));
        assert!(m(&["name==p", "name==a-np-wl"], &p));
        assert!(!m(&["name==p", "name==a-np-wl"], &a));
        assert!(m(&["name==a-wl,labels.l"], &a) && !m(&["name==a-wl,labels.l"], &v));
        assert!(m(&["parent==p"], &a) && !m(&["parent==p"], &p));
        let f = r#"parent!="",labels."containerd.io/gc.root"==check-walk"#;
        assert!(m(&[f], &a) && !m(&[f], &p));
        assert!(m(&["labels.l"], &v) && !m(&["labels.l"], &p));
        assert!(m(&["labels.l==2"], &v) && !m(&["labels.l==2"], &a));
        assert!(m(&[], &v));
    }

    #[test]
    fn unquoted_values_keep_colons_and_regex_matches() {
        let i = info("default/4/sha256:abc", "", Kind::Committed, &[]);
        assert!(m(&["name==default/4/sha256:abc"], &i));
        assert!(m(&["name~=^default/[0-9]+/"], &i));
        assert!(m(&["name~=/sha256:a.c$/"], &i));
        assert!(m(&[r"name~=|\d/sha|"], &i));
        assert!(!m(&["name~=^other"], &i));
        assert!(
            m(&["labels.x!=y"], &i),
            "absent field is != a non-empty value"
        );
        assert!(
            !m(&["labels.x!=\"\""], &i),
            "absent field equals the empty string"
        );
        assert!(m(&["parent==\"\""], &i));
    }

    #[test]
    fn bad_filters_are_invalid_argument() {
        assert!(
            m(&[""], &info("x", "", Kind::Active, &[])),
            "an empty filter matches all"
        );
        for bad in [
            "name==",
            "name=x",
            "name==a b",
            "\"unterminated",
            "labels.~=x",
            "name~=(",
        ] {
            let e = Filters::parse(&[bad]).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)), "{bad:?}: {e}");
        }
    }
}
