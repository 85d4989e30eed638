//! Resume on start (and on taking partitions over): every unfinished
//! instance's effect in flight is re-issued with its key, its timers re-armed.

use super::*;

impl Runtime {
    /// Resumes every unfinished instance: re-issues its effect in flight and re-arms its timers.
    pub(crate) async fn resume(&self) -> Result<usize, RuntimeError> {
        self.resume_partitions(u64::MAX).await
    }

    /// Resumes the unfinished instances of the partitions in `mask` that this process drives.
    pub(crate) async fn resume_partitions(&self, mask: u64) -> Result<usize, RuntimeError> {
        let ids = match &self.0.projections {
            Some(p) => {
                p.catch_up(self.0.store.as_ref()).await?;
                p.unfinished().await?
            }
            None => unfinished_in_store(self.0.store.as_ref()).await?,
        };
        let mut resumed = 0;
        let mut reissuing = tokio::task::JoinSet::new();
        for id in ids {
            if mask & (1 << cluster::partition(id)) == 0 || !self.drives(id) {
                continue;
            }
            let live = match self.live(id).await {
                Ok(l) => l,
                Err(e) if e.is_transient() => {
                    tracing::error!(instance_id = %id, error = %e, "cannot resume");
                    continue;
                }
                Err(e) => {
                    // It would fail the same way on every start: it stops, failed,
                    // and the server starts anyway.
                    tracing::error!(instance_id = %id, error = %e, "cannot resume; the saga is failed");
                    self.fail_unresumable(id, &e).await;
                    continue;
                }
            };
            let st = live.state.lock().await;
            if st.is_terminal() {
                continue;
            }
            resumed += 1;
            if st.in_flight.is_empty() {
                self.perform(&live, &st, saga::resume(&st));
                continue;
            }
            drop(st);
            // The attempt in flight goes out again, its timeout restarted (recorded as
            // `AttemptReissued`); many at once, so their appends share commits.
            if reissuing.len() >= REISSUE_AT_ONCE {
                reissuing.join_next().await;
            }
            let rt = self.clone();
            reissuing.spawn(async move { rt.reissue(live).await });
        }
        reissuing.join_all().await;
        tracing::info!(resumed, "unfinished sagas resumed");
        Ok(resumed)
    }

    /// Records `SagaFailed` for an instance that cannot even be loaded (its
    /// definition no longer compiles, its history does not decode).
    pub(crate) async fn fail_unresumable(&self, id: Uuid, e: &RuntimeError) {
        let event = saga::Event::SagaFailed {
            reason: self
                .0
                .config
                .secrets
                .redact(&format!("cannot resume: {e}"))
                .into_owned(),
            at: self.now(),
        };
        let stream = format!("saga-{id}");
        if let Err(err) = self
            .0
            .store
            .append(&stream, Expected::StreamExists, vec![NewEvent::from(event)])
            .await
        {
            tracing::error!(instance_id = %id, error = %err, "could not record the failure");
        }
    }

    /// Sends an instance's attempt in flight again with its key, its timeout
    /// counting from now. If that cannot be recorded the attempt is sent all
    /// the same (its key keeps it one effect) with its timers as they were.
    pub(crate) async fn reissue(&self, live: Arc<Live>) {
        if let Err(e) = self.apply(live.id, Input::Reissue).await {
            tracing::warn!(instance_id = %live.id, error = %e, "could not record the re-issue; sending the attempt as it stood");
            let st = live.state.lock().await;
            if !st.is_terminal() {
                self.perform(&live, &st, saga::resume(&st));
            }
        }
    }
}

/// The instances whose last event does not end them, read from the whole
/// log: how a runtime without read models finds what to resume. It reads
/// event headers only, but all of them; the read model's list is the fast way.
pub(crate) async fn unfinished_in_store(
    store: &dyn crate::store::EventStore,
) -> Result<Vec<Uuid>, RuntimeError> {
    let mut last: HashMap<Uuid, bool> = HashMap::new();
    let mut from = None;
    loop {
        let batch = store.read_all_refs(from, 4096).await?;
        let Some(end) = batch.last() else { break };
        from = Some(end.position);
        for e in &batch {
            let Some(id) = e.stream.strip_prefix("saga-") else {
                continue;
            };
            if let Ok(id) = Uuid::parse_str(id) {
                last.insert(id, saga::ENDINGS.contains(&e.event_type.as_str()));
            }
        }
    }
    let mut ids: Vec<Uuid> = last
        .into_iter()
        .filter(|(_, ended)| !ended)
        .map(|(id, _)| id)
        .collect();
    ids.sort_unstable();
    Ok(ids)
}
