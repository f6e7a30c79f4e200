//! What the session does with the server's replies: consumes the proxy's own, emits
//! synthetic ones in order, swaps marker errors for refusals, forwards the rest; and how
//! the session ends.

use bytes::{Buf, BytesMut};
use pgwire::tokio::server::MaybeTls;
use tokio::io::AsyncWriteExt;
use tracing::{debug, warn};

use super::{proto, End, Session};
use crate::config::PoolMode;
use crate::session::error::fatal;
use crate::session::error::ClientError;
use crate::session::pipeline::Disposition;
use crate::upstream::conn::BackendError;
use crate::wire::protocol::{self, backend as be, Severity, Step, TxStatus};

impl Session<'_> {
    /// Processes server messages: consumes replies to the proxy's own statements,
    /// emits synthetic replies in order, forwards the rest, swaps marker errors for
    /// refusals, tracks ReadyForQuery and ParameterStatus.
    pub(super) async fn on_server_data(&mut self) -> Result<(), ClientError> {
        let Some(server) = self.server.as_mut() else {
            return Ok(());
        };
        let crate::upstream::conn::ServerConn {
            rbuf: buf,
            statements,
            ..
        } = &mut **server;
        let mut params = Vec::new();
        let mut pos = 0; // scanned
        let mut sent = 0; // forwarded or dropped
        loop {
            if let Some(bytes) = self.pipeline.take_synthetic() {
                write_client(&mut self.client, &buf[sent..pos]).await?;
                write_client(&mut self.client, &bytes).await?;
                sent = pos;
                continue;
            }
            let want: fn(u8) -> bool = if self.pipeline.front_is_proxy() {
                all
            } else {
                wanted_down
            };
            let (tag, start, end) = match self.down.step(buf, pos, want).map_err(proto)? {
                Step::Pass { end, .. } => {
                    pos = end;
                    continue;
                }
                Step::NeedMore { start } => {
                    pos = start;
                    break;
                }
                Step::Message { tag, start, end } => (tag, start, end),
            };
            pos = end;
            if tag == be::NOTIFICATION_RESPONSE {
                // Always the client's, even amid a reply the proxy consumes.
                if self.mode == PoolMode::Transaction {
                    rename_notifier(self.state, &mut buf[start..end]);
                }
                match &self.channel_suffix {
                    None => write_client(&mut self.client, &buf[sent..end]).await?,
                    Some(suffix) => {
                        write_client(&mut self.client, &buf[sent..start]).await?;
                        // Another tenant's channel (or an unscoped one): dropped.
                        let own =
                            crate::sql::channels::unscope_notification(&buf[start..end], suffix);
                        if let Some(own) = own {
                            write_client(&mut self.client, &own).await?;
                        }
                    }
                }
                sent = end;
                continue;
            }
            let msg = &buf[start..end];
            let disposition = self.pipeline.on_message(tag);
            if let Some(why) = self.pipeline.desync() {
                return Err(super::desync_error(why));
            }
            let mut held = false;
            if let Some((n, v)) = (tag == be::PARAMETER_STATUS)
                .then(|| protocol::parse_parameter_status(msg))
                .flatten()
            {
                // encoding: a change rlsgate did not expect ends the session.
                let proxy = !matches!(disposition, Disposition::Forward);
                (self.encoding.on_parameter_status(n, v, proxy))
                    .map_err(|e| ClientError::Protocol(e.to_string()))?;
                // What the server holds, whoever caused it (the proxy's own resets
                // too): the next client is told these values at login.
                params.push((n.to_owned(), v.to_owned()));
                // The client learns every value its session ends up with, as directly:
                // one the proxy's own statement set (re-applying the client's settings
                // after its RESET ALL, say) is forwarded when it differs from what the
                // client was last told.
                // A value the client's own statement set while a proxy statement is
                // queued behind it (the re-application after RESET ALL / DISCARD ALL)
                // is held back too: the client is told where its session ends up.
                held = proxy || self.pipeline.proxy_queued();
                if held {
                    self.settings.consumed(n, v);
                } else {
                    self.settings.forwarded(n, v);
                }
            }
            if self.pipeline.take_skipped_close() {
                // What the server holds is no longer known: every Parse of the proxy's
                // is preceded by a Close from now on.
                statements.forget_all();
            }
            for failed in self.pipeline.take_failed_parses() {
                // As directly: a statement whose Parse failed or was skipped does not exist.
                statements.remove(&failed.server);
                if let Some(stmt) = failed.client {
                    self.statements.forget(&stmt);
                }
            }
            match disposition {
                Disposition::Refuse(code, refusal, extras) => {
                    // The marker's error: the client sees the refusal in its place.
                    write_client(&mut self.client, &buf[sent..start]).await?;
                    let mut err = BytesMut::new();
                    protocol::put_error_with(&mut err, Severity::Error, code, &refusal, extras);
                    write_client(&mut self.client, &err).await?;
                    sent = end;
                    continue;
                }
                Disposition::Swallow => {
                    if tag == be::READY_FOR_QUERY {
                        if let Some(err) = self.proxy_error.take() {
                            if msg.get(protocol::HEADER_LEN) != Some(&b'E') {
                                // The server does not hold what the proxy believes it does.
                                return Err(ClientError::ContextFailed(err.message));
                            }
                            // In an aborted transaction, which rolls back whatever the
                            // client changed too; sent again once the client leaves it.
                            debug!(code = %err.code, "re-applying context failed in an aborted transaction");
                            self.reapply_after_sync = true;
                        }
                    }
                }
                Disposition::ProxyError { critical } => {
                    let fields = protocol::parse_error_fields(msg);
                    if critical {
                        return Err(ClientError::ContextFailed(fields.message));
                    }
                    self.proxy_error = Some(fields);
                }
                Disposition::Shape(stmt, why) => {
                    if tag == be::PARAMETER_DESCRIPTION {
                        self.copies.params = Some(msg[protocol::HEADER_LEN..].to_vec());
                    } else {
                        let params = self.copies.params.take().unwrap_or_default();
                        let shape = crate::upstream::held::Shape::from_describe(&params, msg);
                        let shape = shape.map(std::sync::Arc::new);
                        super::statements::on_shape(
                            &mut self.copies,
                            statements,
                            &stmt,
                            why,
                            shape,
                        );
                    }
                }
                Disposition::Forward if held => {
                    // Held back (see above): dropped here, announced when settled.
                }
                Disposition::Forward => {
                    if self.settings.has_pending() && !self.pipeline.proxy_queued() {
                        // Values the proxy's own statements left the session with, as
                        // directly the client knows every value its session has.
                        let news = self.settings.take_announcements();
                        if !news.is_empty() {
                            write_client(&mut self.client, &buf[sent..start]).await?;
                            write_client(&mut self.client, &news).await?;
                            sent = start;
                        }
                    }
                    match tag {
                        be::READY_FOR_QUERY => {
                            self.tx = TxStatus::from_byte(
                                msg.get(protocol::HEADER_LEN).copied().unwrap_or(0),
                            )
                            .unwrap_or(TxStatus::Failed);
                        }
                        be::COMMAND_COMPLETE => {
                            let tag = msg.get(protocol::HEADER_LEN..).unwrap_or_default();
                            if (tag == b"DEALLOCATE ALL\0" || tag == b"DISCARD ALL\0")
                                && !self.pipeline.deallocated()
                            {
                                // An extended Execute of one: the statements are gone
                                // now, as directly (the server's record was made
                                // uncertain when its text was parsed).
                                self.statements.clear();
                                statements.forget_all();
                            }
                        }
                        be::ERROR_RESPONSE => {
                            let f = protocol::parse_error_fields(msg);
                            self.server_fatal |= f.severity == "FATAL" || f.severity == "PANIC";
                            if let Some(fixed) = self.statements.unrename_error(msg) {
                                write_client(&mut self.client, &buf[sent..start]).await?;
                                write_client(&mut self.client, &fixed).await?;
                                sent = end;
                            }
                        }
                        _ => {}
                    }
                    continue;
                }
            }
            // Consumed: send what came before it, drop the message itself.
            write_client(&mut self.client, &buf[sent..start]).await?;
            sent = end;
        }
        write_client(&mut self.client, &buf[sent..pos]).await?;
        buf.advance(pos);
        for (n, v) in params {
            server.note_parameter(&n, &v);
        }
        self.client.flush().await?;
        self.after_accounting()?;
        if self.reapply_after_sync
            && self.pipeline.is_empty()
            && !self.extended_open
            && self.up.at_boundary()
            && self.tx != TxStatus::Failed
        {
            // A re-application that failed in an aborted transaction is due now that
            // the client left it, and the client may send nothing more (it waited for
            // these replies): nothing is in flight, so the server is not skipping.
            self.reapply_after_sync = false;
            self.reapply();
        }
        self.maybe_release().await
    }

    /// Ends the session: returns or discards the server, tells the client why if needed.
    pub(super) async fn finish(
        &mut self,
        end: Result<End, ClientError>,
    ) -> Result<(), ClientError> {
        let at_boundary = self.at_boundary() && !self.pipeline.in_doubt();
        debug!(end = ?end, at_boundary, "session ended");
        let mut server = self.server.take();
        if let Some(s) = server.as_mut() {
            s.tx = self.tx;
        }
        {
            // No cancel may reach the backend once it goes back to the pool.
            let gate = self.cancel_gate.clone();
            let _held = gate.lock().await;
            self.state.cancel.remove(self.key.0, self.key.1);
        }
        let pool = &self.state.pool;
        if self.pinned.take().is_some() {
            // Temporary tables, LISTEN, held cursors, advisory locks: never handed on.
            if let Some(s) = server.take() {
                pool.discard(s, "pinned session ended").await;
            }
        }
        match end {
            Ok(End::Terminate) | Ok(End::ClientEof) => {
                if let Some(s) = server {
                    pool.checkin(s, at_boundary).await;
                }
                Ok(())
            }
            Ok(End::Shutdown) => {
                if let Some(s) = server {
                    pool.checkin(s, at_boundary).await;
                }
                Err(fatal(&mut self.client, ClientError::Shutdown).await)
            }
            Ok(End::Idle(kind, limit)) => {
                crate::metrics::Metrics::inc(&self.state.metrics.idle_timeouts);
                // Check-in rolls back an open transaction before anyone else gets it.
                if let Some(s) = server {
                    pool.checkin(s, at_boundary).await;
                }
                Err(fatal(&mut self.client, ClientError::IdleTimeout(kind, limit)).await)
            }
            Ok(End::ServerEof) => {
                if let Some(s) = server {
                    pool.discard(s, "server closed the connection").await;
                }
                if self.server_fatal {
                    // The client already has the server's own FATAL (e.g. 57P01).
                    let _ = self.client.shutdown().await;
                    return Ok(());
                }
                let err = ClientError::Upstream(BackendError::Protocol(
                    "server closed the connection unexpectedly".into(),
                ));
                Err(fatal(&mut self.client, err).await)
            }
            Err(e) => {
                if let Some(s) = server {
                    pool.discard(s, "session failed").await;
                }
                match e {
                    ClientError::ContextFailed(_) => {
                        warn!(error = %e, "tenant context could not be applied; session closed");
                        Err(fatal(&mut self.client, e).await)
                    }
                    // Tell the client why (pool exhausted, upstream gone, a protocol
                    // message rlsgate cannot carry) before closing.
                    ClientError::Checkout(_)
                    | ClientError::Upstream(_)
                    | ClientError::Auth(_)
                    | ClientError::Protocol(_) => Err(fatal(&mut self.client, e).await),
                    e => Err(e),
                }
            }
        }
    }
}

/// Server messages the proxy reads whole: replies that end an expected reply (see
/// [`crate::session::pipeline`]) and the few it acts on. DataRow and COPY data stream through.
fn wanted_down(tag: u8) -> bool {
    matches!(
        tag,
        be::READY_FOR_QUERY
            | be::PARAMETER_STATUS
            | be::ERROR_RESPONSE
            | be::NOTICE_RESPONSE
            | be::COPY_IN_RESPONSE
            | b'1'
            | b'2'
            | b'3'
            | b'C'
            | b'I'
            | b's'
            | b'T'
            | b'n'
            | be::NOTIFICATION_RESPONSE
    )
}

fn all(_: u8) -> bool {
    true
}

async fn write_client(client: &mut MaybeTls, bytes: &[u8]) -> Result<(), ClientError> {
    client.write_all(bytes).await?;
    Ok(())
}

/// Transaction mode: a NotificationResponse names the notifying backend's real pid;
/// the notifying client knows itself by the pid rlsgate gave it, so that one is
/// shown instead (as directly, where both are the same).
fn rename_notifier(state: &crate::session::shared::Shared, msg: &mut [u8]) {
    let Some(pid) = msg.get_mut(protocol::HEADER_LEN..protocol::HEADER_LEN + 4) else {
        return;
    };
    let server_pid = i32::from_be_bytes([pid[0], pid[1], pid[2], pid[3]]);
    if let Some(client_pid) = state.cancel.last_binder(server_pid) {
        pid.copy_from_slice(&client_pid.to_be_bytes());
    }
}
