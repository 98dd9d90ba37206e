//! One connection to one broker: framing, headers, correlation ids and version negotiation.
//!
//! A frame is an `i32` size followed by that many bytes: the request header (v1 or v2, as the
//! API and version require) and the body; responses carry a response header (v0 or v1) with
//! the correlation id of their request. Kafka answers requests on a connection in order, so
//! requests may be pipelined: `start` writes a frame, `finish` reads the oldest answer.
//!
//! Invariants: every frame is flushed as soon as it is written (madsim's TCP holds data until a
//! flush); a response frame's size is checked against [`RESPONSE_FRAME_MAX_BYTES`] before any
//! allocation; after any I/O error, timeout or undecodable frame the connection is marked
//! broken and refuses further use, because its byte stream can no longer be trusted to line up
//! with our requests.

use std::collections::{BTreeMap, VecDeque};
use std::marker::PhantomData;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::error::{codes, ClientError};

/// Largest response frame accepted (Kafka's `socket.request.max.bytes` default, plus slack
/// for headers around a maximal fetch).
pub const RESPONSE_FRAME_MAX_BYTES: usize = 100 * 1024 * 1024 + 64 * 1024;
/// ApiVersions version tried first; v3+ carries the client software name.
const API_VERSIONS_PREFERRED: i16 = 3;
/// Software name sent in ApiVersions v3+ (must match Kafka's `[a-zA-Z0-9.-]` rule).
const CLIENT_SOFTWARE_NAME: &str = "runnel";

/// A request written to a connection whose response has not been read yet.
#[must_use = "a started request's response must be read with Connection::finish"]
#[derive(Debug)]
pub struct InFlight<R: Request> {
    correlation_id: i32,
    version: i16,
    _request: PhantomData<fn() -> R>,
}

impl<R: Request> InFlight<R> {
    /// The correlation id the request was sent with.
    pub fn correlation_id(&self) -> i32 {
        self.correlation_id
    }
}

/// A connection to one broker. `S` is a `TcpStream` in production; tests use in-memory pipes.
pub struct Connection<S = TcpStream> {
    stream: BufReader<S>,
    addr: String,
    client_id: StrBytes,
    next_correlation_id: i32,
    /// Correlation ids written and not yet answered, oldest first.
    in_flight: VecDeque<i32>,
    /// Negotiated version per API key: the highest both sides support.
    versions: BTreeMap<i16, i16>,
    request_timeout: Duration,
    broken: bool,
}

impl Connection<TcpStream> {
    /// Opens a TCP connection to `addr` ("host:port") and negotiates API versions.
    pub async fn connect(
        addr: &str,
        client_id: &str,
        request_timeout: Duration,
    ) -> Result<Connection<TcpStream>, ClientError> {
        let stream = match tokio::time::timeout(request_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => return Err(ClientError::Connect { addr: addr.to_string(), error: source }),
            Err(_) => {
                return Err(ClientError::Connect {
                    addr: addr.to_string(),
                    error: std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"),
                })
            }
        };
        let _ = stream.set_nodelay(true);
        let mut conn = Connection::from_stream(stream, addr, client_id, request_timeout);
        conn.negotiate_versions().await?;
        Ok(conn)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// Wraps an open stream. No versions are known until [`Self::negotiate_versions`] runs.
    pub fn from_stream(stream: S, addr: &str, client_id: &str, request_timeout: Duration) -> Connection<S> {
        Connection {
            stream: BufReader::new(stream),
            addr: addr.to_string(),
            client_id: StrBytes::from_string(client_id.to_string()),
            next_correlation_id: 0,
            in_flight: VecDeque::new(),
            versions: BTreeMap::new(),
            request_timeout,
            broken: false,
        }
    }

    /// The broker address this connection was opened to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// True once an error has made the connection unusable; the owner should drop it.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Requests written whose responses have not been read.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The request timeout applied to each write and each response read.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// The negotiated version of API `api_key`, if the broker and this client share one.
    pub fn api_version(&self, api_key: i16) -> Option<i16> {
        self.versions.get(&api_key).copied()
    }

    /// The version to send `R` with.
    pub fn version_for<R: Request>(&self) -> Result<i16, ClientError> {
        self.api_version(R::KEY).ok_or(ClientError::UnsupportedApi { api_key: R::KEY })
    }

    /// Asks the broker which API versions it serves (ApiVersions v3, falling back to the
    /// version the broker names, or v0, on UNSUPPORTED_VERSION) and records, per API, the
    /// highest version both sides support.
    pub async fn negotiate_versions(&mut self) -> Result<(), ClientError> {
        let mut version = API_VERSIONS_PREFERRED;
        loop {
            let request = if version >= 3 {
                ApiVersionsRequest::default()
                    .with_client_software_name(StrBytes::from_static_str(CLIENT_SOFTWARE_NAME))
                    .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")))
            } else {
                ApiVersionsRequest::default()
            };
            let correlation_id = self.write_request(&request, version).await?;
            let mut body = self.read_response_body::<ApiVersionsRequest>(correlation_id, version).await?;
            // On UNSUPPORTED_VERSION the broker answers with a v0 body whatever we sent.
            if body.len() >= 2 && (&body[..2]).get_i16() == codes::UNSUPPORTED_VERSION {
                let v0 = self.decode_body::<ApiVersionsResponse>(&mut body, 0)?;
                let next = v0
                    .api_keys
                    .iter()
                    .find(|k| k.api_key == ApiKey::ApiVersions as i16)
                    .map(|k| k.max_version.min(version - 1))
                    .unwrap_or(0);
                if version == 0 || next < 0 || next >= version {
                    return Err(ClientError::kafka(codes::UNSUPPORTED_VERSION, Some("ApiVersions")));
                }
                version = next;
                continue;
            }
            let response = self.decode_body::<ApiVersionsResponse>(&mut body, version)?;
            if response.error_code != 0 {
                return Err(ClientError::kafka(response.error_code, None));
            }
            self.versions = choose_versions(&response);
            return Ok(());
        }
    }

    /// Sends `request` at the negotiated version and waits for its response.
    pub async fn send<R: Request>(&mut self, request: &R) -> Result<R::Response, ClientError> {
        let version = self.version_for::<R>()?;
        self.send_versioned(request, version, self.request_timeout).await
    }

    /// Sends `request` at `version` and waits up to `timeout` for its response.
    pub async fn send_versioned<R: Request>(
        &mut self,
        request: &R,
        version: i16,
        timeout: Duration,
    ) -> Result<R::Response, ClientError> {
        let pending = self.start_versioned(request, version).await?;
        self.finish_within(pending, timeout).await
    }

    /// Writes `request` at the negotiated version without waiting for its response.
    pub async fn start<R: Request>(&mut self, request: &R) -> Result<InFlight<R>, ClientError> {
        let version = self.version_for::<R>()?;
        self.start_versioned(request, version).await
    }

    /// Writes `request` at `version` without waiting for its response.
    pub async fn start_versioned<R: Request>(&mut self, request: &R, version: i16) -> Result<InFlight<R>, ClientError> {
        let correlation_id = self.write_request(request, version).await?;
        self.in_flight.push_back(correlation_id);
        Ok(InFlight { correlation_id, version, _request: PhantomData })
    }

    /// Writes a request the broker will not answer (a produce with acks=0).
    pub async fn send_without_response<R: Request>(&mut self, request: &R, version: i16) -> Result<(), ClientError> {
        self.write_request(request, version).await.map(|_| ())
    }

    /// Reads the response to the oldest in-flight request, which must be `pending`.
    pub async fn finish<R: Request>(&mut self, pending: InFlight<R>) -> Result<R::Response, ClientError> {
        let timeout = self.request_timeout;
        self.finish_within(pending, timeout).await
    }

    /// Like [`Self::finish`] with an explicit timeout (long-polling fetches need more).
    pub async fn finish_within<R: Request>(
        &mut self,
        pending: InFlight<R>,
        timeout: Duration,
    ) -> Result<R::Response, ClientError> {
        if self.in_flight.front() != Some(&pending.correlation_id) {
            return Err(ClientError::InvalidArgument(format!(
                "responses are read in request order; correlation id {} is not the oldest",
                pending.correlation_id
            )));
        }
        self.in_flight.pop_front();
        let mut body = self.read_response_body_within::<R>(pending.correlation_id, pending.version, timeout).await?;
        self.decode_body::<R::Response>(&mut body, pending.version)
    }

    /// Encodes and writes one request frame, then flushes. Returns its correlation id.
    async fn write_request<R: Request>(&mut self, request: &R, version: i16) -> Result<i32, ClientError> {
        self.check_usable()?;
        let correlation_id = self.next_correlation_id;
        self.next_correlation_id = self.next_correlation_id.wrapping_add(1);
        let frame = encode_request_frame(request, version, correlation_id, &self.client_id)?;
        let timeout = self.request_timeout;
        let write = async {
            self.stream.get_mut().write_all(&frame).await?;
            self.stream.get_mut().flush().await
        };
        match tokio::time::timeout(timeout, write).await {
            Ok(Ok(())) => Ok(correlation_id),
            Ok(Err(source)) => Err(self.fail_io(source)),
            Err(_) => Err(self.fail_timeout(timeout)),
        }
    }

    async fn read_response_body<R: Request>(
        &mut self,
        correlation_id: i32,
        version: i16,
    ) -> Result<Bytes, ClientError> {
        let timeout = self.request_timeout;
        self.read_response_body_within::<R>(correlation_id, version, timeout).await
    }

    /// Reads one frame, checks its header's correlation id, and returns the body.
    async fn read_response_body_within<R: Request>(
        &mut self,
        correlation_id: i32,
        version: i16,
        timeout: Duration,
    ) -> Result<Bytes, ClientError> {
        self.check_usable()?;
        let frame = match tokio::time::timeout(timeout, read_frame(&mut self.stream)).await {
            Ok(Ok(frame)) => frame,
            Ok(Err(FrameError::Io(source))) => return Err(self.fail_io(source)),
            Ok(Err(FrameError::TooLarge(size))) => {
                return Err(self.fail_protocol(format!(
                    "response frame of {size} bytes is outside 0..={RESPONSE_FRAME_MAX_BYTES}"
                )))
            }
            Err(_) => return Err(self.fail_timeout(timeout)),
        };
        match split_response_frame::<R>(frame, version, correlation_id) {
            Ok(body) => Ok(body),
            Err(e) => Err(self.fail_protocol(e)),
        }
    }

    fn decode_body<T: Decodable>(&mut self, body: &mut Bytes, version: i16) -> Result<T, ClientError> {
        T::decode(body, version).map_err(|e| {
            self.fail_protocol(format!(
                "decoding {} v{version}: {e}",
                std::any::type_name::<T>().rsplit("::").next().unwrap_or("response")
            ))
        })
    }

    fn check_usable(&self) -> Result<(), ClientError> {
        if self.broken {
            return Err(ClientError::Io {
                addr: self.addr.clone(),
                error: std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    "connection closed after an earlier error",
                ),
            });
        }
        Ok(())
    }

    fn fail_io(&mut self, source: std::io::Error) -> ClientError {
        self.broken = true;
        ClientError::Io { addr: self.addr.clone(), error: source }
    }

    fn fail_timeout(&mut self, timeout: Duration) -> ClientError {
        self.broken = true;
        ClientError::Timeout { addr: self.addr.clone(), timeout_ms: timeout.as_millis() as u64 }
    }

    fn fail_protocol(&mut self, message: String) -> ClientError {
        self.broken = true;
        ClientError::Protocol(format!("{} (from {})", message, self.addr))
    }
}

/// For each API both sides know, the highest version in the intersection of the broker's
/// advertised range and the range kafka-protocol can encode.
pub fn choose_versions(response: &ApiVersionsResponse) -> BTreeMap<i16, i16> {
    let mut versions = BTreeMap::new();
    for key in &response.api_keys {
        let Ok(api) = ApiKey::try_from(key.api_key) else {
            continue;
        };
        let ours = api.valid_versions();
        let min = key.min_version.max(ours.min);
        let max = key.max_version.min(ours.max);
        if min <= max {
            versions.insert(key.api_key, max);
        }
    }
    versions
}

/// Encodes `[size][request header][body]` for `request` at `version`.
pub fn encode_request_frame<R: Request>(
    request: &R,
    version: i16,
    correlation_id: i32,
    client_id: &StrBytes,
) -> Result<Bytes, ClientError> {
    let encode_err = |e: anyhow::Error| ClientError::Protocol(format!("encoding API {} v{version}: {e}", R::KEY));
    if version < R::VERSIONS.min || version > R::VERSIONS.max {
        return Err(ClientError::UnsupportedApi { api_key: R::KEY });
    }
    let header_version = R::header_version(version);
    let header = RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(client_id.clone()));
    let size =
        header.compute_size(header_version).map_err(encode_err)? + request.compute_size(version).map_err(encode_err)?;
    let size_i32 = i32::try_from(size)
        .map_err(|_| ClientError::InvalidArgument(format!("request of {size} bytes is too large")))?;
    let mut buf = BytesMut::with_capacity(4 + size);
    buf.put_i32(size_i32);
    header.encode(&mut buf, header_version).map_err(encode_err)?;
    request.encode(&mut buf, version).map_err(encode_err)?;
    assert_eq!(buf.len(), 4 + size, "compute_size disagrees with encode");
    Ok(buf.freeze())
}

/// Splits a response frame (without its size prefix) into header and body, checking the
/// correlation id. Returns the body.
pub fn split_response_frame<R: Request>(mut frame: Bytes, version: i16, correlation_id: i32) -> Result<Bytes, String> {
    let header_version = R::Response::header_version(version);
    let header = ResponseHeader::decode(&mut frame, header_version)
        .map_err(|e| format!("decoding response header v{header_version}: {e}"))?;
    if header.correlation_id != correlation_id {
        return Err(format!(
            "response correlation id {} does not match request's {correlation_id}",
            header.correlation_id
        ));
    }
    Ok(frame)
}

enum FrameError {
    Io(std::io::Error),
    TooLarge(i64),
}

/// Reads one `[i32 size][payload]` frame, checking the size before allocating.
async fn read_frame<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Bytes, FrameError> {
    let size = stream.read_i32().await.map_err(FrameError::Io)?;
    if size < 0 || size as usize > RESPONSE_FRAME_MAX_BYTES {
        return Err(FrameError::TooLarge(size as i64));
    }
    let mut payload = BytesMut::zeroed(size as usize);
    stream.read_exact(&mut payload).await.map_err(FrameError::Io)?;
    Ok(payload.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::api_versions_response::ApiVersion;
    use kafka_protocol::messages::{MetadataRequest, MetadataResponse};

    /// Reads one request frame from the server side of a pipe: (api key, version, corr id).
    async fn read_request<S: AsyncRead + Unpin>(s: &mut S) -> (i16, i16, i32, Bytes) {
        let size = s.read_i32().await.unwrap();
        let mut buf = vec![0u8; size as usize];
        s.read_exact(&mut buf).await.unwrap();
        let mut buf = Bytes::from(buf);
        let key = (&buf[0..2]).get_i16();
        let version = (&buf[2..4]).get_i16();
        let hv = ApiKey::try_from(key).unwrap().request_header_version(version);
        let header = RequestHeader::decode(&mut buf, hv).unwrap();
        (key, version, header.correlation_id, buf)
    }

    /// Writes a response frame for a request of `key` at `version`.
    async fn write_response<S: AsyncWrite + Unpin, T: Encodable>(
        s: &mut S,
        key: i16,
        version: i16,
        corr: i32,
        body: &T,
    ) {
        let hv = ApiKey::try_from(key).unwrap().response_header_version(version);
        let mut buf = BytesMut::new();
        ResponseHeader::default().with_correlation_id(corr).encode(&mut buf, hv).unwrap();
        body.encode(&mut buf, version).unwrap();
        s.write_i32(buf.len() as i32).await.unwrap();
        s.write_all(&buf).await.unwrap();
        s.flush().await.unwrap();
    }

    fn api(key: ApiKey, min: i16, max: i16) -> ApiVersion {
        ApiVersion::default().with_api_key(key as i16).with_min_version(min).with_max_version(max)
    }

    #[test]
    fn request_frame_has_size_header_and_body() {
        // Proves the frame layout: size prefix equals the rest, header v2 for Metadata v12
        // carries key, version, correlation id and client id, and the body decodes back.
        let req = MetadataRequest::default().with_topics(None);
        let frame = encode_request_frame(&req, 12, 77, &StrBytes::from_static_str("cli")).unwrap();
        let mut rest = frame.slice(4..);
        assert_eq!((&frame[..4]).get_i32() as usize, rest.len());
        let header = RequestHeader::decode(&mut rest, 2).unwrap();
        assert_eq!(header.request_api_key, 3);
        assert_eq!(header.request_api_version, 12);
        assert_eq!(header.correlation_id, 77);
        assert_eq!(header.client_id.as_deref(), Some("cli"));
        let body = MetadataRequest::decode(&mut rest, 12).unwrap();
        assert_eq!(body.topics, None);
        assert!(rest.is_empty());
        // Versions outside what kafka-protocol knows are refused, not sent.
        assert!(encode_request_frame(&req, 99, 1, &StrBytes::default()).is_err());
    }

    #[test]
    fn response_frame_checks_correlation_id() {
        // Proves a response with the wrong correlation id is rejected.
        let mut buf = BytesMut::new();
        ResponseHeader::default().with_correlation_id(5).encode(&mut buf, 1).unwrap();
        buf.put_slice(b"body");
        let body = split_response_frame::<MetadataRequest>(buf.clone().freeze(), 12, 5).unwrap();
        assert_eq!(&body[..], b"body");
        assert!(split_response_frame::<MetadataRequest>(buf.freeze(), 12, 6).is_err());
    }

    #[test]
    fn version_choice_intersects_ranges() {
        // Proves each API gets the highest common version: Produce advertised 0-20 is capped at
        // kafka-protocol's 13, Fetch 4-7 stays 7, an API entirely below our floor is dropped.
        let mut resp = ApiVersionsResponse::default();
        resp.api_keys = vec![api(ApiKey::Produce, 0, 20), api(ApiKey::Fetch, 4, 7), api(ApiKey::ListOffsets, 0, 0)];
        let v = choose_versions(&resp);
        assert_eq!(v.get(&0), Some(&ApiKey::Produce.valid_versions().max));
        assert_eq!(v.get(&1), Some(&7));
        assert_eq!(v.get(&2), None);
    }

    #[tokio::test]
    async fn negotiates_then_pipelines_requests_in_order() {
        // Proves ApiVersions v3 negotiation, the fall back after UNSUPPORTED_VERSION, and that
        // two pipelined requests are answered in order with matching correlation ids.
        let (client_side, mut server) = tokio::io::duplex(1 << 16);
        let server_task = tokio::spawn(async move {
            // First ApiVersions v3: answer UNSUPPORTED_VERSION with a v0 body offering v0-2.
            let (key, version, corr, _) = read_request(&mut server).await;
            assert_eq!((key, version), (18, 3));
            let mut refuse = ApiVersionsResponse::default();
            refuse.error_code = codes::UNSUPPORTED_VERSION;
            refuse.api_keys = vec![api(ApiKey::ApiVersions, 0, 2)];
            write_response(&mut server, key, 0, corr, &refuse).await;
            // Retry at v2: answer with the table.
            let (key, version, corr, _) = read_request(&mut server).await;
            assert_eq!((key, version), (18, 2));
            let mut ok = ApiVersionsResponse::default();
            ok.api_keys = vec![api(ApiKey::ApiVersions, 0, 2), api(ApiKey::Metadata, 0, 12)];
            write_response(&mut server, key, version, corr, &ok).await;
            // Two pipelined Metadata requests.
            let a = read_request(&mut server).await;
            let b = read_request(&mut server).await;
            for (key, version, corr, _) in [a, b] {
                assert_eq!((key, version), (3, 12));
                let mut resp = MetadataResponse::default();
                resp.controller_id = corr.into();
                write_response(&mut server, key, version, corr, &resp).await;
            }
        });
        let mut conn = Connection::from_stream(client_side, "pipe", "test", Duration::from_secs(5));
        conn.negotiate_versions().await.unwrap();
        assert_eq!(conn.api_version(3), Some(12));
        assert_eq!(conn.api_version(0), None);
        let req = MetadataRequest::default();
        let first = conn.start(&req).await.unwrap();
        let second = conn.start(&req).await.unwrap();
        assert_eq!(conn.in_flight(), 2);
        let (c1, c2) = (first.correlation_id(), second.correlation_id());
        assert_eq!(*conn.finish(first).await.unwrap().controller_id, c1);
        assert_eq!(*conn.finish(second).await.unwrap().controller_id, c2);
        server_task.await.unwrap();
    }

    #[tokio::test]
    async fn oversized_or_closed_stream_breaks_connection() {
        // Proves a frame size beyond the limit is refused before allocation, and the connection
        // then refuses further use.
        let (client_side, mut server) = tokio::io::duplex(1 << 16);
        let mut conn = Connection::from_stream(client_side, "pipe", "test", Duration::from_secs(5));
        conn.versions.insert(3, 12);
        let pending = conn.start(&MetadataRequest::default()).await.unwrap();
        let _ = read_request(&mut server).await;
        server.write_i32(i32::MAX).await.unwrap();
        server.flush().await.unwrap();
        let err = conn.finish(pending).await.unwrap_err();
        assert!(matches!(err, ClientError::Protocol(_)), "{err}");
        assert!(conn.is_broken());
        assert!(conn.start(&MetadataRequest::default()).await.is_err());
    }

    #[tokio::test]
    async fn silent_broker_times_out() {
        // Proves a request the broker never answers fails with Timeout, not a hang.
        let (client_side, _server) = tokio::io::duplex(1 << 16);
        let mut conn = Connection::from_stream(client_side, "pipe", "test", Duration::from_millis(50));
        conn.versions.insert(3, 12);
        let err = conn.send(&MetadataRequest::default()).await.unwrap_err();
        assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
        assert!(conn.is_broken());
    }
}
