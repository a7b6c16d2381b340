//! `google.protobuf.Any` as containerd's transfer and streaming services use it: type URLs
//! are bare full names (`containerd.types.transfer.Progress`, no `type.googleapis.com/`),
//! and a URL with a prefix is accepted on the way in (everything to its last `/` left out).

use prost::Message;
use prost_types::Any;

/// The bare type URL of a message type.
pub trait TypeUrl {
    const TYPE_URL: &'static str;
}

macro_rules! type_urls {
    ($($t:ty => $url:expr),* $(,)?) => {
        $(impl TypeUrl for $t { const TYPE_URL: &'static str = $url; })*
    };
}

use crate::services::streaming::v1::StreamInit;
use crate::types::transfer as t;

type_urls! {
    StreamInit => "containerd.services.streaming.v1.StreamInit",
    t::OciRegistry => "containerd.types.transfer.OCIRegistry",
    t::ImageStore => "containerd.types.transfer.ImageStore",
    t::ImageImportStream => "containerd.types.transfer.ImageImportStream",
    t::ImageExportStream => "containerd.types.transfer.ImageExportStream",
    t::Progress => "containerd.types.transfer.Progress",
    t::AuthRequest => "containerd.types.transfer.AuthRequest",
    t::AuthResponse => "containerd.types.transfer.AuthResponse",
    t::Data => "containerd.types.transfer.Data",
    t::WindowUpdate => "containerd.types.transfer.WindowUpdate",
}

/// The type URL of `google.protobuf.Empty` (a stream's acknowledgement).
pub const EMPTY: &str = "google.protobuf.Empty";

/// `message` as an Any.
pub fn pack<M: Message + TypeUrl>(message: &M) -> Any {
    Any {
        type_url: M::TYPE_URL.to_string(),
        value: message.encode_to_vec(),
    }
}

/// The bare name of `any`'s type.
pub fn type_name(any: &Any) -> &str {
    any.type_url.rsplit('/').next().unwrap_or(&any.type_url)
}

/// `any` as an `M`, if it is one (and decodes).
pub fn unpack<M: Message + Default + TypeUrl>(any: &Any) -> Option<M> {
    (type_name(any) == M::TYPE_URL)
        .then(|| M::decode(any.value.as_slice()).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixed_urls_are_accepted_and_bare_ones_sent() {
        let data = t::Data { data: vec![1, 2] };
        let any = pack(&data);
        assert_eq!(any.type_url, "containerd.types.transfer.Data");
        assert_eq!(unpack::<t::Data>(&any), Some(data.clone()));
        let prefixed = Any {
            type_url: format!("type.googleapis.com/{}", any.type_url),
            value: any.value,
        };
        assert_eq!(unpack::<t::Data>(&prefixed), Some(data));
        assert_eq!(unpack::<t::WindowUpdate>(&prefixed), None);
    }
}
