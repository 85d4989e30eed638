//! A protocol-level test double of the EventStoreDB gRPC server, written from
//! the protocol's documented semantics, for testing sagaflow's adapter where no
//! real server can run. It is not EventStoreDB: it keeps events in memory and
//! speaks only what the `kurrentdb` client uses for appends, reads and
//! catch-up subscriptions:
//!
//! - HTTP/2 cleartext (`tls=false`); `ServerFeatures` is not served, which
//!   the client takes as "no optional features";
//! - `Streams.Append`: options, then the proposed events; a wrong expected
//!   revision is an OK response carrying `wrong_expected_version`;
//! - `Streams.Read` of a stream (forwards or backwards from a revision, start
//!   or end; `stream_not_found` for a missing stream) or of `$all` (from a
//!   position, inclusive, start or end; stream-prefix filters);
//! - catch-up subscriptions: `Streams.Read` with the subscription option
//!   answers a confirmation first, then the events after the given point,
//!   then live ones, and never ends the stream by itself.
//!
//! Positions are sparse (`(index + 1) * 64`, commit = prepare), as a real
//! server's byte offsets are, so an adapter cannot lean on them being dense.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    pub mod event_store {
        pub mod client {
            tonic::include_proto!("event_store.client");
            pub mod streams {
                tonic::include_proto!("event_store.client.streams");
            }
        }
    }
    pub mod google {
        pub mod rpc {
            tonic::include_proto!("google.rpc");
        }
    }
}

use proto::event_store::client::streams::{
    self as s, append_req, append_resp, read_req, read_resp, streams_server,
};
use proto::event_store::client::{uuid as puuid, Empty, StreamIdentifier, Uuid};

#[derive(Debug, Clone)]
struct Recorded {
    id: ::uuid::Uuid,
    stream: Vec<u8>,
    revision: u64,
    position: u64,
    metadata: HashMap<String, String>,
    custom_metadata: Vec<u8>,
    data: Vec<u8>,
}

#[derive(Default)]
struct Log {
    events: Vec<Recorded>,
    /// Indices into `events`, per stream.
    streams: HashMap<Vec<u8>, Vec<usize>>,
    /// Hard-deleted streams: refused to appends and reads for good. Their
    /// events stay in `$all` (the server drops them only in a scavenge, which
    /// the double does not do), followed by a `$streamDeleted` event.
    tombstoned: std::collections::HashSet<Vec<u8>>,
}

/// The error the server answers for a hard-deleted stream: the client reads
/// the `exception` trailer.
fn stream_deleted(stream: &[u8]) -> Status {
    let mut status = Status::failed_precondition(format!(
        "Event stream '{}' is deleted.",
        String::from_utf8_lossy(stream)
    ));
    status.metadata_mut().insert(
        "exception",
        tonic::metadata::MetadataValue::from_static("stream-deleted"),
    );
    status
}

/// .NET ticks (100 ns) since the Unix epoch, as the server writes `created`.
fn ticks_now() -> String {
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (created.as_nanos() / 100).to_string()
}

/// The server's state; cheap to clone.
#[derive(Clone)]
pub struct Double {
    log: Arc<Mutex<Log>>,
    live: broadcast::Sender<Recorded>,
}

impl Default for Double {
    fn default() -> Self {
        Self {
            log: Arc::default(),
            live: broadcast::channel(4096).0,
        }
    }
}

/// A running double: its address (for `esdb://127.0.0.1:PORT?tls=false`) and a handle that stops it when dropped.
pub struct Running {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Running {
    /// The connection string for the `kurrentdb` client.
    pub fn url(&self) -> String {
        format!("esdb://{}?tls=false&discoveryInterval=0", self.addr)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

impl Double {
    /// Serves on 127.0.0.1 (a free port) until the returned handle is dropped.
    pub async fn serve(&self) -> Running {
        self.serve_on("127.0.0.1:0".parse().expect("address")).await
    }

    /// Serves on `addr` (e.g. again on the port of a server that was stopped).
    pub async fn serve_on(&self, addr: SocketAddr) -> Running {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let svc = streams_server::StreamsServer::new(self.clone());
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    async {
                        let _ = stopped.await;
                    },
                )
                .await;
        });
        Running {
            addr,
            stop: Some(stop),
        }
    }

    /// Events stored so far.
    pub fn len(&self) -> usize {
        self.log.lock().unwrap().events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Events stored so far in the streams whose name starts with `prefix`.
    pub fn len_of(&self, prefix: &str) -> usize {
        let log = self.log.lock().unwrap();
        log.events
            .iter()
            .filter(|e| e.stream.starts_with(prefix.as_bytes()))
            .count()
    }
}

fn to_proto(e: &Recorded, structured: bool) -> read_resp::ReadEvent {
    let id = if structured {
        let (most, least) = e.id.as_u64_pair();
        puuid::Value::Structured(puuid::Structured {
            most_significant_bits: most as i64,
            least_significant_bits: least as i64,
        })
    } else {
        puuid::Value::String(e.id.to_string())
    };
    read_resp::ReadEvent {
        event: Some(read_resp::read_event::RecordedEvent {
            id: Some(Uuid { value: Some(id) }),
            stream_identifier: Some(StreamIdentifier {
                stream_name: e.stream.clone(),
            }),
            stream_revision: e.revision,
            prepare_position: e.position,
            commit_position: e.position,
            metadata: e.metadata.clone(),
            custom_metadata: e.custom_metadata.clone(),
            data: e.data.clone(),
        }),
        link: None,
        position: Some(read_resp::read_event::Position::CommitPosition(e.position)),
    }
}

fn event_resp(e: &Recorded, structured: bool) -> s::ReadResp {
    s::ReadResp {
        content: Some(read_resp::Content::Event(to_proto(e, structured))),
    }
}

/// Which events a read wants, as a predicate on stream names.
fn stream_filter(options: &read_req::Options) -> Box<dyn Fn(&Recorded) -> bool + Send + Sync> {
    use read_req::options::filter_options::Filter;
    match &options.filter_option {
        Some(read_req::options::FilterOption::Filter(f)) => match &f.filter {
            Some(Filter::StreamIdentifier(expr)) => {
                let prefixes = expr.prefix.clone();
                Box::new(move |e: &Recorded| {
                    prefixes.iter().any(|p| e.stream.starts_with(p.as_bytes()))
                })
            }
            Some(Filter::EventType(expr)) => {
                let prefixes = expr.prefix.clone();
                Box::new(move |e: &Recorded| {
                    let t = e
                        .metadata
                        .get("type")
                        .map(String::as_str)
                        .unwrap_or_default();
                    prefixes.iter().any(|p| t.starts_with(p.as_str()))
                })
            }
            None => Box::new(|_| true),
        },
        _ => Box::new(|_| true),
    }
}

type ReadStream = Pin<Box<dyn Stream<Item = Result<s::ReadResp, Status>> + Send>>;

#[tonic::async_trait]
impl streams_server::Streams for Double {
    type ReadStream = ReadStream;
    type BatchAppendStream = Pin<Box<dyn Stream<Item = Result<s::BatchAppendResp, Status>> + Send>>;

    async fn append(
        &self,
        request: Request<Streaming<s::AppendReq>>,
    ) -> Result<Response<s::AppendResp>, Status> {
        let mut incoming = request.into_inner();
        let Some(first) = incoming.message().await? else {
            return Err(Status::invalid_argument(
                "an append starts with its options",
            ));
        };
        let Some(append_req::Content::Options(options)) = first.content else {
            return Err(Status::invalid_argument(
                "an append starts with its options",
            ));
        };
        let stream = options
            .stream_identifier
            .ok_or_else(|| Status::invalid_argument("no stream identifier"))?
            .stream_name;
        let mut proposed = Vec::new();
        while let Some(m) = incoming.message().await? {
            match m.content {
                Some(append_req::Content::ProposedMessage(p)) => proposed.push(p),
                _ => return Err(Status::invalid_argument("options sent twice")),
            }
        }
        let mut log = self.log.lock().unwrap();
        if log.tombstoned.contains(&stream) {
            return Err(stream_deleted(&stream));
        }
        let last = log
            .streams
            .get(&stream)
            .and_then(|ix| ix.last())
            .map(|i| log.events[*i].revision);
        use append_req::options::ExpectedStreamRevision as E;
        let admitted = match options.expected_stream_revision {
            Some(E::Revision(r)) => last == Some(r),
            Some(E::NoStream(_)) => last.is_none(),
            Some(E::StreamExists(_)) => last.is_some(),
            Some(E::Any(_)) | None => true,
        };
        if !admitted {
            use append_resp::wrong_expected_version as w;
            let wrong = append_resp::WrongExpectedVersion {
                current_revision_option_20_6_0: Some(match last {
                    Some(l) => w::CurrentRevisionOption2060::CurrentRevision2060(l),
                    None => w::CurrentRevisionOption2060::NoStream2060(Empty {}),
                }),
                expected_revision_option_20_6_0: match options.expected_stream_revision {
                    Some(E::Revision(r)) => {
                        Some(w::ExpectedRevisionOption2060::ExpectedRevision2060(r))
                    }
                    Some(E::StreamExists(_)) => {
                        Some(w::ExpectedRevisionOption2060::StreamExists2060(Empty {}))
                    }
                    _ => Some(w::ExpectedRevisionOption2060::Any2060(Empty {})),
                },
                current_revision_option: Some(match last {
                    Some(l) => w::CurrentRevisionOption::CurrentRevision(l),
                    None => w::CurrentRevisionOption::CurrentNoStream(Empty {}),
                }),
                expected_revision_option: Some(match options.expected_stream_revision {
                    Some(E::Revision(r)) => w::ExpectedRevisionOption::ExpectedRevision(r),
                    Some(E::NoStream(_)) => w::ExpectedRevisionOption::ExpectedNoStream(Empty {}),
                    Some(E::StreamExists(_)) => {
                        w::ExpectedRevisionOption::ExpectedStreamExists(Empty {})
                    }
                    _ => w::ExpectedRevisionOption::ExpectedAny(Empty {}),
                }),
            };
            return Ok(Response::new(s::AppendResp {
                result: Some(append_resp::Result::WrongExpectedVersion(wrong)),
            }));
        }
        let ticks = ticks_now();
        let mut revision = last;
        let mut position = 0;
        for p in proposed {
            let id = match p.id.and_then(|u| u.value) {
                Some(puuid::Value::String(s)) => ::uuid::Uuid::parse_str(&s)
                    .map_err(|e| Status::invalid_argument(e.to_string()))?,
                Some(puuid::Value::Structured(st)) => ::uuid::Uuid::from_u64_pair(
                    st.most_significant_bits as u64,
                    st.least_significant_bits as u64,
                ),
                None => ::uuid::Uuid::new_v4(),
            };
            let rev = revision.map_or(0, |r| r + 1);
            revision = Some(rev);
            position = (log.events.len() as u64 + 1) * 64;
            let mut metadata = p.metadata;
            metadata.insert("created".into(), ticks.clone());
            let e = Recorded {
                id,
                stream: stream.clone(),
                revision: rev,
                position,
                metadata,
                custom_metadata: p.custom_metadata,
                data: p.data,
            };
            let index = log.events.len();
            log.events.push(e.clone());
            log.streams.entry(stream.clone()).or_default().push(index);
            let _ = self.live.send(e);
        }
        use append_resp::success as ok;
        Ok(Response::new(s::AppendResp {
            result: Some(append_resp::Result::Success(append_resp::Success {
                current_revision_option: Some(match revision {
                    Some(r) => ok::CurrentRevisionOption::CurrentRevision(r),
                    None => ok::CurrentRevisionOption::NoStream(Empty {}),
                }),
                position_option: Some(if position > 0 {
                    ok::PositionOption::Position(append_resp::Position {
                        commit_position: position,
                        prepare_position: position,
                    })
                } else {
                    ok::PositionOption::NoPosition(Empty {})
                }),
            })),
        }))
    }

    async fn read(
        &self,
        request: Request<s::ReadReq>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let options = request
            .into_inner()
            .options
            .ok_or_else(|| Status::invalid_argument("no read options"))?;
        let structured = matches!(
            options
                .uuid_option
                .as_ref()
                .and_then(|u| u.content.as_ref()),
            Some(read_req::options::uuid_option::Content::Structured(_))
        );
        let backwards =
            options.read_direction == read_req::options::ReadDirection::Backwards as i32;
        let keep = stream_filter(&options);
        let subscription = matches!(
            options.count_option,
            Some(read_req::options::CountOption::Subscription(_))
        );
        let count = match options.count_option {
            Some(read_req::options::CountOption::Count(n)) => n,
            _ => u64::MAX,
        };
        // subscribe before reading, so no event falls between the two
        let live = self.live.subscribe();
        let (past, after, stream_name): (Vec<Recorded>, u64, Option<Vec<u8>>) = {
            let log = self.log.lock().unwrap();
            match options.stream_option {
                Some(read_req::options::StreamOption::Stream(so)) => {
                    use read_req::options::stream_options::RevisionOption as R;
                    let name = so
                        .stream_identifier
                        .map(|s| s.stream_name)
                        .unwrap_or_default();
                    if log.tombstoned.contains(&name) {
                        return Err(stream_deleted(&name));
                    }
                    let Some(ix) = log.streams.get(&name) else {
                        if !subscription {
                            let (tx, rx) = mpsc::channel(1);
                            let _ = tx.try_send(Ok(s::ReadResp {
                                content: Some(read_resp::Content::StreamNotFound(
                                    read_resp::StreamNotFound {
                                        stream_identifier: Some(StreamIdentifier {
                                            stream_name: name,
                                        }),
                                    },
                                )),
                            }));
                            return Ok(Response::new(Box::pin(ReceiverStream::new(rx))));
                        }
                        let head = log.events.last().map_or(0, |e| e.position);
                        return Ok(Response::new(subscribe(
                            Vec::new(),
                            head,
                            Some(name),
                            keep,
                            structured,
                            true,
                            live,
                        )));
                    };
                    let events: Vec<Recorded> = ix.iter().map(|i| log.events[*i].clone()).collect();
                    let last = events.last().map_or(0, |e| e.revision);
                    let mut chosen: Vec<Recorded> =
                        match (so.revision_option, backwards, subscription) {
                            // a subscription from a revision starts after it
                            (Some(R::Revision(r)), _, true) => {
                                events.into_iter().filter(|e| e.revision > r).collect()
                            }
                            (Some(R::End(_)), _, true) => Vec::new(),
                            (Some(R::Revision(r)), false, false) => {
                                events.into_iter().filter(|e| e.revision >= r).collect()
                            }
                            (Some(R::Revision(r)), true, false) => events
                                .into_iter()
                                .filter(|e| e.revision <= r)
                                .rev()
                                .collect(),
                            (Some(R::End(_)), true, _) => events.into_iter().rev().collect(),
                            (Some(R::End(_)), false, _) => {
                                events.into_iter().filter(|e| e.revision > last).collect()
                            }
                            (_, true, _) => events.into_iter().rev().collect(),
                            (_, false, _) => events,
                        };
                    chosen.truncate(usize::try_from(count).unwrap_or(usize::MAX));
                    let after = log.events.last().map_or(0, |e| e.position);
                    (chosen, after, Some(name))
                }
                Some(read_req::options::StreamOption::All(ao)) => {
                    use read_req::options::all_options::AllOption as A;
                    let head = log.events.last().map_or(0, |e| e.position);
                    let all = log.events.iter().filter(|e| keep(e));
                    let mut chosen: Vec<Recorded> = match (ao.all_option, backwards, subscription) {
                        // a subscription from a position starts after it
                        (Some(A::Position(p)), _, true) => all
                            .filter(|e| e.position > p.commit_position)
                            .cloned()
                            .collect(),
                        (Some(A::End(_)), _, true) => Vec::new(),
                        (Some(A::Position(p)), false, false) => all
                            .filter(|e| e.position >= p.commit_position)
                            .cloned()
                            .collect(),
                        (Some(A::Position(p)), true, false) => all
                            .filter(|e| e.position < p.commit_position)
                            .rev()
                            .cloned()
                            .collect(),
                        (Some(A::End(_)), true, _) => all.rev().cloned().collect(),
                        (Some(A::End(_)), false, _) => Vec::new(),
                        (_, true, _) => all.rev().cloned().collect(),
                        (_, false, _) => all.cloned().collect(),
                    };
                    chosen.truncate(usize::try_from(count).unwrap_or(usize::MAX));
                    (chosen, head, None)
                }
                None => return Err(Status::invalid_argument("no stream option")),
            }
        };
        Ok(Response::new(subscribe(
            past,
            after,
            stream_name,
            keep,
            structured,
            subscription,
            live,
        )))
    }

    async fn delete(&self, _: Request<s::DeleteReq>) -> Result<Response<s::DeleteResp>, Status> {
        Err(Status::unimplemented("not in the double"))
    }

    /// A hard delete: the stream's name is refused from now on, and a
    /// `$streamDeleted` event (revision `i64::MAX`, as the server writes it)
    /// marks the end of its events in `$all`.
    async fn tombstone(
        &self,
        request: Request<s::TombstoneReq>,
    ) -> Result<Response<s::TombstoneResp>, Status> {
        use s::tombstone_req::options::ExpectedStreamRevision as E;
        let options = request
            .into_inner()
            .options
            .ok_or_else(|| Status::invalid_argument("no tombstone options"))?;
        let stream = options
            .stream_identifier
            .ok_or_else(|| Status::invalid_argument("no stream identifier"))?
            .stream_name;
        let mut log = self.log.lock().unwrap();
        if log.tombstoned.contains(&stream) {
            return Err(stream_deleted(&stream));
        }
        let last = log
            .streams
            .get(&stream)
            .and_then(|ix| ix.last())
            .map(|i| log.events[*i].revision);
        let admitted = match options.expected_stream_revision {
            Some(E::Revision(r)) => last == Some(r),
            Some(E::NoStream(_)) => last.is_none(),
            Some(E::StreamExists(_)) => last.is_some(),
            Some(E::Any(_)) | None => true,
        };
        if !admitted {
            return Err(Status::failed_precondition("wrong expected version"));
        }
        let position = (log.events.len() as u64 + 1) * 64;
        let metadata = HashMap::from([
            ("type".to_string(), "$streamDeleted".to_string()),
            (
                "content-type".to_string(),
                "application/octet-stream".to_string(),
            ),
            ("created".to_string(), ticks_now()),
        ]);
        let e = Recorded {
            id: ::uuid::Uuid::new_v4(),
            stream: stream.clone(),
            revision: i64::MAX as u64,
            position,
            metadata,
            custom_metadata: Vec::new(),
            data: Vec::new(),
        };
        log.events.push(e.clone());
        log.streams.remove(&stream);
        log.tombstoned.insert(stream);
        let _ = self.live.send(e);
        Ok(Response::new(s::TombstoneResp {
            position_option: Some(s::tombstone_resp::PositionOption::Position(
                s::tombstone_resp::Position {
                    commit_position: position,
                    prepare_position: position,
                },
            )),
        }))
    }

    async fn batch_append(
        &self,
        _: Request<Streaming<s::BatchAppendReq>>,
    ) -> Result<Response<Self::BatchAppendStream>, Status> {
        Err(Status::unimplemented("not in the double"))
    }
}

/// Sends `past`, then (for a subscription) live events after `after`; a plain read ends after `past`.
fn subscribe(
    past: Vec<Recorded>,
    after: u64,
    stream_name: Option<Vec<u8>>,
    keep: Box<dyn Fn(&Recorded) -> bool + Send + Sync>,
    structured: bool,
    subscription: bool,
    mut live: broadcast::Receiver<Recorded>,
) -> ReadStream {
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        if subscription {
            let confirmation = s::ReadResp {
                content: Some(read_resp::Content::Confirmation(
                    read_resp::SubscriptionConfirmation {
                        subscription_id: ::uuid::Uuid::new_v4().to_string(),
                    },
                )),
            };
            if tx.send(Ok(confirmation)).await.is_err() {
                return;
            }
        }
        for e in &past {
            if tx.send(Ok(event_resp(e, structured))).await.is_err() {
                return;
            }
        }
        if !subscription {
            return; // a read ends (OK) after its events
        }
        // live: only events committed after what was sent; never ended by the server
        loop {
            match live.recv().await {
                Ok(e) => {
                    let wanted = e.position > after
                        && match &stream_name {
                            Some(n) => e.stream == *n,
                            None => keep(&e),
                        };
                    if wanted && tx.send(Ok(event_resp(&e, structured))).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let _ = tx.send(Err(Status::aborted("subscriber too slow"))).await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

/// A TCP proxy in front of a server, to cut the network and bring it back on
/// the same address (an outage as a client sees it: connections drop, new
/// ones are refused).
pub struct Proxy {
    pub addr: SocketAddr,
    target: SocketAddr,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The forwarded connections, so a cut can wait until none runs.
    connections: Arc<Mutex<tokio::task::JoinSet<()>>>,
}

impl Proxy {
    /// Listens on a free 127.0.0.1 port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(Mutex::new(tokio::task::JoinSet::new()));
        Proxy {
            addr,
            target,
            task: Mutex::new(Some(tokio::spawn(forward(
                listener,
                target,
                connections.clone(),
            )))),
            connections,
        }
    }

    /// Drops every connection and stops listening; when it returns, nothing
    /// is forwarded any more (aborting a task only asks it to stop).
    pub async fn cut(&self) {
        let listening = self.task.lock().unwrap().take();
        if let Some(t) = listening {
            t.abort();
            let _ = t.await;
        }
        let mut open = std::mem::take(&mut *self.connections.lock().unwrap());
        open.abort_all();
        while open.join_next().await.is_some() {}
    }

    /// Listens again on the same address.
    pub async fn restore(&self) {
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .expect("rebind");
        *self.task.lock().unwrap() = Some(tokio::spawn(forward(
            listener,
            self.target,
            self.connections.clone(),
        )));
    }

    /// The connection string for the `kurrentdb` client, through the proxy.
    pub fn url(&self) -> String {
        format!("esdb://{}?tls=false&discoveryInterval=0", self.addr)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(t) = self.task.lock().unwrap().take() {
            t.abort();
        }
        self.connections.lock().unwrap().abort_all();
    }
}

async fn forward(
    listener: tokio::net::TcpListener,
    target: SocketAddr,
    connections: Arc<Mutex<tokio::task::JoinSet<()>>>,
) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            return;
        };
        connections.lock().unwrap().spawn(async move {
            if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}
