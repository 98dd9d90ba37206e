//! Test helpers: a broker on an in-memory disk, and a way to send it one encoded request and
//! decode its response exactly as a client would.

use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};

use super::{Broker, Reply};
use crate::config::BrokerConfig;
use crate::runtime::MemDisk;

/// A broker (node 7) with data on `disk` and the given extra config pairs.
pub fn open_broker_with(disk: &MemDisk, extra: &[(&str, &str)]) -> Arc<Broker> {
    let mut pairs = vec![
        ("node.id", "7"),
        ("log.dirs", "/data"),
        ("listeners", "PLAINTEXT://0.0.0.0:9092"),
        ("group.initial.rebalance.delay.ms", "0"),
    ];
    pairs.extend_from_slice(extra);
    let config = BrokerConfig::from_pairs(pairs).unwrap();
    Broker::open(Arc::new(config), Arc::new(disk.clone())).unwrap()
}

/// A broker (node 7) with data on `disk`.
pub fn open_broker(disk: &MemDisk) -> Arc<Broker> {
    open_broker_with(disk, &[])
}

/// Encodes a request frame (header + body, no size prefix) with correlation id 99.
pub fn frame<R: Encodable + HeaderVersion>(key: ApiKey, version: i16, req: &R) -> Bytes {
    let mut header = RequestHeader::default();
    header.request_api_key = key as i16;
    header.request_api_version = version;
    header.correlation_id = 99;
    header.client_id = Some(StrBytes::from_static_str("tester"));
    let mut buf = BytesMut::new();
    header.encode(&mut buf, R::header_version(version)).unwrap();
    req.encode(&mut buf, version).unwrap();
    buf.freeze()
}

/// Resolves a reply to its response frame.
pub async fn reply_frame(reply: Reply, what: &str) -> Bytes {
    match reply {
        Reply::Ready(bytes) | Reply::Held(bytes, _) => bytes,
        Reply::Wait(f) => f.await,
        Reply::Nothing => panic!("{what}: no reply"),
        Reply::Close(why) => panic!("{what}: closed: {why}"),
    }
}

/// Sends one request through `Broker::handle` and decodes the response, checking the frame
/// size, correlation id and that nothing trails the body.
pub async fn call<Req: Encodable + HeaderVersion, Resp: Decodable + HeaderVersion>(
    b: &Arc<Broker>,
    key: ApiKey,
    version: i16,
    req: &Req,
) -> Resp {
    let what = format!("{key:?} v{version}");
    let mut out = reply_frame(b.handle(frame(key, version, req)), &what).await;
    assert!(out.len() > 4, "{what}: empty response frame (encode failed)");
    let size = out.get_i32() as usize;
    assert_eq!(size, out.len());
    let header = ResponseHeader::decode(&mut out, Resp::header_version(version)).unwrap();
    assert_eq!(header.correlation_id, 99);
    let resp = Resp::decode(&mut out, version).unwrap();
    assert!(!out.has_remaining(), "{what}: trailing bytes");
    resp
}
