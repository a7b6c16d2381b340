//! containerd's filter language as List parses it: any strings, parsed and matched against
//! a snapshot's info; errors are fine, panics are not, and a filter that parses once
//! parses the same way again.
#![no_main]

use std::time::UNIX_EPOCH;

use libfuzzer_sys::fuzz_target;
use snapshotter::{Filters, Info, Kind};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let filters: Vec<&str> = text.split('\n').collect();
    let info = Info {
        name: "default/3/sha256:abc".into(),
        parent: "default/2/base".into(),
        kind: Kind::Committed,
        created: UNIX_EPOCH,
        updated: UNIX_EPOCH,
        labels: [
            (
                "containerd.io/snapshot.ref".to_string(),
                "sha256:abc".to_string(),
            ),
            ("a b".to_string(), "c,d".to_string()),
        ]
        .into(),
    };
    if let Ok(parsed) = Filters::parse(&filters) {
        let again = Filters::parse(&filters).expect("a filter that parsed once parses again");
        assert_eq!(parsed.matches(&info), again.matches(&info));
    }
});
