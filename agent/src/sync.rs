//! Agent-to-agent volume sync: the sending and the receiving side of
//! `PeerTransferService.ReceiveVolume` (see `transfer.proto` for the exchange).
//!
//! Memory is bounded on both sides: the sender's reader thread hands at most
//! [`QUEUE`] messages of at most [`RUN`] bytes to gRPC, whose HTTP/2 flow control holds it
//! back when the receiver is slower (back-pressure); the receiver handles one message at a
//! time. Files are read, hashed and written on blocking threads only.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use corral_proto::v1 as pb;
use pb::sync_reply::Msg as Reply;
use pb::sync_upload::Msg as Up;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use crate::agent::Agent;
use crate::error::{AgentError, Result};
use crate::transfer::{self, Checksum, Hash, Partial, BLOCK};

/// Data bytes per message at most (a run of contiguous blocks).
pub const RUN: usize = 1 << 20;
/// Messages queued between the sender's reader thread and gRPC.
pub const QUEUE: usize = 4;
/// Block hashes per `SyncHave` message.
const HAVE_PART: usize = 8192;
const PARTIAL_SUFFIX: &str = ".corral-partial";

/// Counters of one send, shared by the reader thread and the progress reporter.
#[derive(Debug, Default)]
pub struct Counters {
    pub total: AtomicU64,
    pub scanned: AtomicU64,
    pub sent: AtomicU64,
    pub skipped: AtomicU64,
    pub wire: AtomicU64,
}

impl Counters {
    pub fn progress(&self, volume: &str, started: Instant) -> pb::SyncProgress {
        pb::SyncProgress {
            volume: volume.into(),
            total_bytes: self.total.load(Ordering::Relaxed),
            scanned_bytes: self.scanned.load(Ordering::Relaxed),
            sent_bytes: self.sent.load(Ordering::Relaxed),
            skipped_bytes: self.skipped.load(Ordering::Relaxed),
            wire_bytes: self.wire.load(Ordering::Relaxed),
            elapsed_ms: started.elapsed().as_millis() as u64,
            ..Default::default()
        }
    }
}

fn peer_err(peer: &str, e: impl std::fmt::Display) -> AgentError {
    AgentError::Unavailable(format!("peer agent {peer}: {e}"))
}

/// A channel to a peer agent, with this agent's certificate when TLS is configured.
pub async fn peer_channel(
    agent: &Arc<Agent>,
    peer: &str,
    tls_name: &str,
) -> Result<tonic::transport::Channel> {
    let tls = agent.blocking(|a| a.cfg.tls_pem()).await?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = if peer.contains("://") {
        peer.to_string()
    } else {
        format!("{scheme}://{peer}")
    };
    let mut ep = tonic::transport::Endpoint::from_shared(url.clone())
        .map_err(|e| AgentError::invalid(format!("peer address {peer:?}: {e}")))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20))
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(8 << 20));
    if let Some(pem) = tls {
        let host = if tls_name.is_empty() {
            ep.uri().host().unwrap_or_default().to_string()
        } else {
            tls_name.to_string()
        };
        let cfg = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(pem.ca))
            .identity(tonic::transport::Identity::from_pem(pem.cert, pem.key))
            .domain_name(host);
        ep = ep
            .tls_config(cfg)
            .map_err(|e| AgentError::invalid(format!("TLS to {peer}: {e}")))?;
    }
    ep.connect().await.map_err(|e| {
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg = format!("{msg}: {s}");
            src = s.source();
        }
        peer_err(peer, msg)
    })
}

/// What the reader thread decides for each block: one message at a time.
struct Reader {
    file: File,
    path: std::path::PathBuf,
    size: u64,
    blocks: Vec<u64>,
    have: HashMap<u64, Hash>,
    limit: u64,
}

impl Reader {
    /// Reads, hashes and queues what the peer lacks; returns the finish message.
    fn run(self, tx: &mpsc::Sender<pb::SyncUpload>, c: &Counters) -> Result<pb::SyncFinish> {
        let b = u64::from(BLOCK);
        let mut sum = Checksum::new();
        let mut run: Vec<u8> = Vec::with_capacity(RUN);
        let mut run_at = 0u64;
        let started = Instant::now();
        let send = |m: pb::sync_upload::Msg, c: &Counters| -> Result<()> {
            let msg = pb::SyncUpload { msg: Some(m) };
            let len = msg.encoded_len() as u64;
            if self.limit > 0 {
                // Token bucket: never ahead of `limit` bytes per second since the start.
                let sent = c.wire.load(Ordering::Relaxed) + len;
                let due = Duration::from_secs_f64(sent as f64 / self.limit as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
            c.wire.fetch_add(len, Ordering::Relaxed);
            tx.blocking_send(msg)
                .map_err(|_| AgentError::Unavailable("the peer closed the transfer".into()))
        };
        let flush = |run: &mut Vec<u8>, at: u64, c: &Counters| -> Result<()> {
            if run.is_empty() {
                return Ok(());
            }
            c.sent.fetch_add(run.len() as u64, Ordering::Relaxed);
            send(
                Up::Data(pb::SyncData {
                    offset: at,
                    data: std::mem::replace(run, Vec::with_capacity(RUN)).into(),
                    zero_len: 0,
                }),
                c,
            )
        };
        // Every block the sender has data in, and every block the peer has data in.
        let mut order: Vec<u64> = self.blocks.clone();
        order.extend(self.have.keys().copied());
        order.sort_unstable();
        order.dedup();
        let ours: std::collections::HashSet<u64> = self.blocks.iter().copied().collect();
        for index in order {
            let off = index * b;
            let theirs = self.have.get(&index);
            let mut content = false;
            if ours.contains(&index) {
                // Read straight into the run being built; a block that is not sent is cut off
                // again. The run is sent first when this block cannot extend it.
                let len = (self.size - off).min(b) as usize;
                if !run.is_empty() && (run_at + run.len() as u64 != off || run.len() + len > RUN) {
                    flush(&mut run, run_at, c)?;
                }
                if run.is_empty() {
                    run_at = off;
                }
                let start = run.len();
                run.resize(start + len, 0);
                self.file
                    .read_exact_at(&mut run[start..], off)
                    .map_err(|e| {
                        AgentError::internal(format!("reading {}: {e}", self.path.display()))
                    })?;
                c.scanned.fetch_add(len as u64, Ordering::Relaxed);
                let block = &run[start..];
                if !transfer::is_zero(block) {
                    content = true;
                    let h = transfer::hash(block);
                    sum.add(index, &h);
                    if theirs == Some(&h) {
                        c.skipped.fetch_add(len as u64, Ordering::Relaxed);
                        run.truncate(start);
                    }
                } else {
                    run.truncate(start);
                }
            }
            if !content && theirs.is_some() {
                flush(&mut run, run_at, c)?;
                send(
                    Up::Data(pb::SyncData {
                        offset: off,
                        data: Default::default(),
                        zero_len: b.min(self.size - off),
                    }),
                    c,
                )?;
            }
        }
        flush(&mut run, run_at, c)?;
        let data_blocks = sum.data_blocks;
        Ok(pb::SyncFinish {
            checksum: sum.finish(self.size).to_vec(),
            data_blocks,
        })
    }
}

/// Sends `req.volume` to the peer; reports progress to `progress` about four times a second.
/// Tells the peer that the caller cancelled (it discards its partial file) and waits briefly
/// for it to end the transfer.
async fn cancel_peer(
    abort: &mpsc::Sender<pb::SyncUpload>,
    replies: &mut tonic::Streaming<pb::SyncReply>,
) -> AgentError {
    let msg = pb::SyncUpload {
        msg: Some(Up::Abort(pb::SyncAbort {
            reason: "the transfer was cancelled".into(),
        })),
    };
    let told = tokio::time::timeout(Duration::from_secs(5), async {
        if abort.send(msg).await.is_ok() {
            while let Some(Ok(_)) = replies.next().await {}
        }
    })
    .await;
    tracing::info!(peer_told = told.is_ok(), "transfer cancelled by the caller");
    AgentError::Unavailable("the transfer was cancelled".into())
}

/// Sends a volume to the peer agent (its ReceiveVolume), naming the operation `op` it works
/// for, if any, as the caller named it; progress goes to `progress`.
pub async fn send(
    agent: Arc<Agent>,
    req: pb::SendVolumeRequest,
    op: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    progress: impl Fn(pb::SyncProgress) + Send,
    cancelled: impl std::future::Future<Output = ()> + Send,
) -> Result<pb::SyncProgress> {
    tokio::pin!(cancelled);
    let started = Instant::now();
    if req.peer.is_empty() {
        return Err(AgentError::invalid("a peer address is required"));
    }
    let dest = if req.dest.is_empty() {
        req.volume.clone()
    } else {
        corral_proto::rules::name("destination volume", &req.dest)?;
        req.dest.clone()
    };
    if !req.basis.is_empty() {
        corral_proto::rules::name("basis volume", &req.basis)?;
        if req.basis == dest {
            return Err(AgentError::invalid(
                "the basis is the copy itself: name an older file, or use replace",
            ));
        }
    }
    if req.mode & !0o777 != 0 || (req.mode != 0 && req.mode & 0o400 == 0) {
        return Err(AgentError::invalid(format!(
            "mode {:o} is not permission bits its owner can read (0400 to 0777)",
            req.mode
        )));
    }
    let volume = req.volume.clone();
    let (path, file, size, mode, extents) = agent
        .blocking(move |a| {
            use std::os::unix::fs::PermissionsExt;
            let path = a.storage.existing(&volume)?;
            let file = crate::fsx::open(&path)?;
            let meta = file.metadata()?;
            let ext = transfer::data_extents(&file, meta.len());
            Ok((
                path,
                file,
                meta.len(),
                meta.permissions().mode() & 0o777,
                ext,
            ))
        })
        .await?;
    let counters = Arc::new(Counters::default());
    counters
        .total
        .store(extents.iter().map(|e| e.1).sum(), Ordering::Relaxed);
    let channel = peer_channel(&agent, &req.peer, &req.peer_tls_name).await?;
    let mut client = pb::peer_transfer_service_client::PeerTransferServiceClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let (tx, rx) = mpsc::channel::<pb::SyncUpload>(QUEUE);
    let header = pb::SyncUpload {
        msg: Some(Up::Header(pb::SyncHeader {
            volume: dest,
            size,
            block_size: BLOCK,
            mode: match (req.archive, req.mode) {
                (true, _) => 0o444,
                (false, 0) => mode,
                (false, m) => m,
            },
            replace: req.replace,
            basis: req.basis.clone(),
            archive: req.archive,
        })),
    };
    counters
        .wire
        .fetch_add(header.encoded_len() as u64, Ordering::Relaxed);
    tx.send(header)
        .await
        .map_err(|_| AgentError::internal("upload queue closed"))?;
    // Kept to tell the peer to discard its partial file when our caller cancels.
    let abort = tx.clone();
    let mut upload = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(op) = op {
        upload
            .metadata_mut()
            .insert(corral_proto::OPERATION_HEADER, op);
    }
    let mut replies = client
        .receive_volume(upload)
        .await
        .map_err(AgentError::from_peer)?
        .into_inner();
    // What the peer holds already.
    let mut have: HashMap<u64, Hash> = HashMap::new();
    loop {
        let m = tokio::select! {
            m = replies.message() => m,
            _ = &mut cancelled => return Err(cancel_peer(&abort, &mut replies).await),
        };
        let m = m
            .map_err(AgentError::from_peer)?
            .ok_or_else(|| peer_err(&req.peer, "closed the transfer before listing its blocks"))?;
        counters
            .wire
            .fetch_add(m.encoded_len() as u64, Ordering::Relaxed);
        match m.msg {
            Some(Reply::Have(h)) => {
                if h.hashes.len() != h.indexes.len() * 32 {
                    return Err(peer_err(&req.peer, "sent a malformed block list"));
                }
                for (i, chunk) in h.indexes.iter().zip(h.hashes.chunks_exact(32)) {
                    let mut hash = [0u8; 32];
                    hash.copy_from_slice(chunk);
                    have.insert(*i, hash);
                }
                if h.last {
                    break;
                }
            }
            _ => return Err(peer_err(&req.peer, "answered out of order")),
        }
    }
    let peer_had = have.len() as u64;
    let reader = Reader {
        file,
        path,
        size,
        blocks: transfer::blocks_of(&extents, BLOCK),
        have,
        limit: req.bandwidth_limit,
    };
    let c = Arc::clone(&counters);
    let span = tracing::Span::current();
    let read = tokio::task::spawn_blocking(move || {
        span.in_scope(|| {
            let finish = reader.run(&tx, &c)?;
            let msg = pb::SyncUpload {
                msg: Some(Up::Finish(finish)),
            };
            c.wire
                .fetch_add(msg.encoded_len() as u64, Ordering::Relaxed);
            tx.blocking_send(msg)
                .map_err(|_| AgentError::Unavailable("the peer closed the transfer".into()))
        })
    });
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tokio::pin!(read);
    let mut read_done = false;
    let done = loop {
        tokio::select! {
            r = &mut read, if !read_done => {
                read_done = true;
                if let Err(e) = r? {
                    // The peer's own error explains more than the closed queue.
                    if let Ok(Some(Err(s))) = tokio::time::timeout(Duration::from_secs(2), replies.next()).await {
                        return Err(AgentError::from_peer(s));
                    }
                    return Err(e);
                }
            }
            m = replies.next() => {
                match m {
                    Some(Ok(pb::SyncReply { msg: Some(Reply::Done(d)) })) => break d,
                    Some(Ok(_)) => return Err(peer_err(&req.peer, "answered out of order")),
                    Some(Err(s)) => return Err(AgentError::from_peer(s)),
                    None => return Err(peer_err(&req.peer, "closed the transfer without an answer")),
                }
            }
            _ = tick.tick() => {
                progress(counters.progress(&req.volume, started));
            }
            _ = &mut cancelled => return Err(cancel_peer(&abort, &mut replies).await),
        }
    };
    let mut last = counters.progress(&req.volume, started);
    last.done = true;
    last.checksum = done.checksum;
    last.peer_had_blocks = peer_had;
    crate::metrics::sent(last.sent_bytes, last.skipped_bytes, last.wire_bytes);
    tracing::info!(
        volume = %req.volume, peer = %req.peer, sent = last.sent_bytes, skipped = last.skipped_bytes,
        wire = last.wire_bytes, ms = last.elapsed_ms, "volume sent"
    );
    Ok(last)
}

/// The receiving side: header, our block list, data, then the verified file.
pub async fn receive(
    agent: Arc<Agent>,
    mut inbound: tonic::Streaming<pb::SyncUpload>,
    out: mpsc::Sender<std::result::Result<pb::SyncReply, tonic::Status>>,
) -> Result<()> {
    let header = match inbound.message().await.map_err(AgentError::from_peer)? {
        Some(pb::SyncUpload {
            msg: Some(Up::Header(h)),
        }) => h,
        _ => return Err(AgentError::invalid("a transfer starts with its header")),
    };
    let dest = agent.storage.path(&header.volume)?;
    if header.block_size != BLOCK {
        return Err(AgentError::invalid(format!(
            "block size {} is not this agent's {BLOCK}",
            header.block_size
        )));
    }
    // One sync per volume at a time.
    let _claim = agent.claim(&format!("sync:{}", header.volume), || {
        format!(
            "volume {:?} is already being received; try again when that ends",
            header.volume
        )
    })?;
    let partial_path = agent
        .storage
        .root()
        .join(format!(".{}{PARTIAL_SUFFIX}", header.volume));
    let volume = header.volume.clone();
    // An existing copy is compared (or, with `replace`, used as the basis of the delta); a
    // partial file of an interrupted sync is resumed.
    let started = Instant::now();
    let basis = if header.basis.is_empty() {
        None
    } else {
        let b = agent.storage.path(&header.basis)?;
        if header.basis == header.volume {
            return Err(AgentError::invalid("the basis is the copy itself"));
        }
        Some(b)
    };
    let (pp, d, size, replace, volume_name) = (
        partial_path.clone(),
        dest.clone(),
        header.size,
        header.replace,
        header.volume.clone(),
    );
    let (partial, sig) = agent
        .blocking(move |a| {
            if d.exists() && replace {
                // Replacing a copy writes it: only a volume nobody else owns.
                a.check_change(
                    &volume_name,
                    &d,
                    crate::ownership::Actor::Admin,
                    crate::ownership::Change::Overwrite,
                )?;
            }
            if d.exists() && !replace {
                Ok((None, transfer::signature(&d, BLOCK)?))
            } else {
                // The basis is only read, and only when there is no copy to start from.
                let from = if d.exists() {
                    Some(d.as_path())
                } else if let Some(b) = basis.as_deref() {
                    if !b.exists() {
                        return Err(AgentError::NotFound(format!(
                            "basis volume {:?} is not on this host",
                            b.file_name().unwrap_or_default()
                        )));
                    }
                    Some(b)
                } else {
                    None
                };
                let (p, sig) = prepare(&pp, from, size)?;
                Ok((Some(p), sig))
            }
        })
        .await?;
    let compare_only = partial.is_none();
    let resumed = if compare_only { 0 } else { sig.blocks.len() };
    tracing::info!(%volume, size = header.size, held_blocks = sig.blocks.len(), compare_only, "receiving");
    let parts: Vec<&[(u64, Hash)]> = if sig.blocks.is_empty() {
        vec![&[]]
    } else {
        sig.blocks.chunks(HAVE_PART).collect()
    };
    let count = parts.len();
    for (i, part) in parts.into_iter().enumerate() {
        let have = pb::SyncHave {
            indexes: part.iter().map(|(i, _)| *i).collect(),
            hashes: part.iter().flat_map(|(_, h)| h.iter().copied()).collect(),
            last: i + 1 == count,
        };
        out.send(Ok(pb::SyncReply {
            msg: Some(Reply::Have(have)),
        }))
        .await
        .map_err(|_| AgentError::Unavailable("the sender went away".into()))?;
    }
    let scanned_ms = started.elapsed().as_millis() as u64;
    // Writing and hashing run on a thread of their own, so that receiving the next message
    // (TLS, HTTP/2, decoding) overlaps them; the queue between them is bounded. Spawned now
    // (not `Agent::blocking`, which starts when awaited): data must flow before the end.
    let (wtx, mut wrx) = mpsc::channel::<pb::SyncData>(QUEUE);
    let span = tracing::Span::current();
    let writer = partial.map(|ready| {
        tokio::task::spawn_blocking(move || {
            span.in_scope(|| -> Result<Partial> {
                let mut p = ready()?;
                while let Some(d) = wrx.blocking_recv() {
                    if d.data.is_empty() {
                        p.zero(d.offset, d.zero_len)?;
                    } else {
                        p.write(d.offset, &d.data)?;
                    }
                }
                Ok(p)
            })
        })
    });
    let mut aborted = false;
    let ended = loop {
        match inbound.message().await {
            Ok(Some(pb::SyncUpload {
                msg: Some(Up::Data(d)),
            })) => {
                if writer.is_none() {
                    return Err(AgentError::exists(format!(
                        "volume {:?} exists on this host with a different content; sync with replace to update it",
                        header.volume
                    )));
                }
                if wtx.send(d).await.is_err() {
                    // The writer stopped: its error is the answer.
                    break None;
                }
            }
            Ok(Some(pb::SyncUpload {
                msg: Some(Up::Finish(f)),
            })) => break Some(Ok(f)),
            Ok(Some(pb::SyncUpload {
                msg: Some(Up::Abort(a)),
            })) => {
                aborted = true;
                break Some(Err(AgentError::Unavailable(format!(
                    "the sender cancelled the transfer: {}",
                    a.reason
                ))));
            }
            Ok(Some(_)) => {
                break Some(Err(AgentError::invalid("unexpected message in a transfer")))
            }
            Ok(None) | Err(_) => {
                break Some(Err(AgentError::Unavailable(
                    "the sender went away mid-transfer".into(),
                )))
            }
        }
    };
    drop(wtx);
    let partial = match writer {
        Some(w) => Some(w.await??),
        None => None,
    };
    let finish = match ended {
        Some(Ok(f)) => f,
        Some(Err(e)) => {
            if let Some(p) = partial {
                if aborted {
                    let pp = partial_path.clone();
                    drop(p);
                    let _ = agent
                        .blocking(move |_| Ok(std::fs::remove_file(&pp)?))
                        .await;
                    tracing::info!(%volume, "transfer cancelled by the sender; partial file removed");
                } else {
                    let _ = agent.blocking(move |_| Ok(p.file.sync_all()?)).await;
                    tracing::warn!(%volume, error = %e, "transfer ended early; the partial file is kept for a resume");
                }
            }
            return Err(e);
        }
        None => return Err(AgentError::internal("the writer stopped without an error")),
    };
    let received_ms = started.elapsed().as_millis() as u64;
    let (mode, name, archive) = (
        if header.archive { 0o444 } else { header.mode },
        header.volume.clone(),
        header.archive,
    );
    let done = match partial {
        None => {
            // Compare only: nothing was sent, so the existing copy must be the same.
            if sig.checksum()[..] != finish.checksum[..] {
                return Err(AgentError::exists(format!(
                    "volume {name:?} exists on this host with a different content; sync with replace to update it"
                )));
            }
            pb::SyncDone {
                checksum: transfer::hex(&finish.checksum),
                bytes_written: 0,
            }
        }
        Some(p) => {
            let images = Arc::clone(&agent);
            agent
                .blocking(move |_| {
                    let mut p = p;
                    let sum = p.verify(&finish.checksum)?;
                    let written = p.written;
                    // An archive is kept as sent: its backing is adopted when it comes back.
                    if !archive {
                        images.adopt_backing(&p.path)?;
                    }
                    p.install(&dest, mode)?;
                    Ok(pb::SyncDone {
                        checksum: transfer::hex(&sum),
                        bytes_written: written,
                    })
                })
                .await?
        }
    };
    crate::metrics::received(done.bytes_written);
    tracing::info!(
        %volume, bytes_written = done.bytes_written, resumed_blocks = resumed, scanned_ms,
        received_ms, total_ms = started.elapsed().as_millis() as u64,
        "volume received and verified"
    );
    out.send(Ok(pb::SyncReply {
        msg: Some(Reply::Done(done)),
    }))
    .await
    .map_err(|_| AgentError::Unavailable("the sender went away".into()))?;
    Ok(())
}

/// The partial file, once whatever it waits for (a copy of the basis) is done.
type Ready = Box<dyn FnOnce() -> Result<Partial> + Send>;

/// Opens the partial file to receive into, with the signature of what it holds. A resumed
/// sync keeps what arrived; a delta against an older copy of the same length scans that copy
/// while the kernel copies it into the partial file (the writer waits for the copy).
fn prepare(
    partial: &std::path::Path,
    basis: Option<&std::path::Path>,
    size: u64,
) -> Result<(Ready, transfer::Signature)> {
    let same_length = basis.is_some_and(|b| std::fs::metadata(b).is_ok_and(|m| m.len() == size));
    if let (false, true, Some(dest)) = (partial.exists(), same_length, basis) {
        let (pp, d) = (partial.to_path_buf(), dest.to_path_buf());
        let copy = std::thread::spawn(move || Partial::open(&pp, Some(&d), size));
        let sig = transfer::signature(dest, BLOCK);
        let blocks: std::collections::BTreeMap<u64, Hash> = match &sig {
            Ok(s) => s.blocks.iter().copied().collect(),
            Err(_) => Default::default(),
        };
        let ready = move || -> Result<Partial> {
            let mut p = copy
                .join()
                .map_err(|_| AgentError::internal("the copy of the basis failed"))??;
            p.blocks = blocks;
            Ok(p)
        };
        return Ok((Box::new(ready), sig?));
    }
    let mut p = Partial::open(partial, basis, size)?;
    let sig = p.scan()?;
    Ok((Box::new(move || Ok(p)), sig))
}

impl Agent {
    /// Content checksum of a volume, as the sync computes it.
    pub fn volume_checksum(&self, name: &str) -> Result<pb::VolumeChecksumResponse> {
        let path = self.storage.existing(name)?;
        let sig = transfer::signature(&path, BLOCK)?;
        Ok(pb::VolumeChecksumResponse {
            checksum: transfer::hex(&sig.checksum()),
            size: sig.size,
            allocated: sig.allocated,
            data_blocks: sig.blocks.len() as u64,
        })
    }

    /// A received qcow2 whose backing file is a volume of the sender's storage root points
    /// at the same volume in ours (header only; the data is not touched). The backing volume
    /// must be here already: parents are synced first.
    pub fn adopt_backing(&self, path: &std::path::Path) -> Result<()> {
        let Ok(chain) = self.images.info(path) else {
            return Ok(()); // not an image qemu-img reads: a plain file
        };
        let Some(top) = chain.first() else {
            return Ok(());
        };
        let Some(backing) = top.backing_filename.as_deref().filter(|b| !b.is_empty()) else {
            return Ok(());
        };
        let file_name = crate::migration::file_name(backing).unwrap_or_default();
        let local = self.storage.path(&file_name).map_err(|_| {
            AgentError::precondition(format!("backing file {backing} is not a volume"))
        })?;
        if !local.exists() {
            return Err(AgentError::precondition(format!(
                "backing volume {file_name:?} is not on this host: sync it first"
            )));
        }
        if std::path::Path::new(backing) != local {
            self.images.rebase(path, Some(&local), true)?;
        }
        Ok(())
    }
}
