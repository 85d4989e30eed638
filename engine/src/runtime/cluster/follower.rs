//! With replicas: the lease loop that moves partitions in and out, and the
//! log follower that takes in what other replicas wrote.

use super::super::*;
use crate::runtime::executor::Live;

impl Runtime {
    /// With replicas: the API addresses of the other replicas, in an order
    /// that changes from call to call (so no one replica gets every relay).
    pub async fn other_replicas(&self) -> Vec<String> {
        match &self.0.cluster {
            Some(c) => c.other_urls().await,
            None => Vec::new(),
        }
    }

    /// Whether this process drives the instance (always, without replicas).
    pub(crate) fn drives(&self, id: Uuid) -> bool {
        self.0.cluster.as_ref().is_none_or(|c| c.holds(id))
    }

    /// Whether this server is one of several replicas on a shared store.
    pub fn is_replica(&self) -> bool {
        self.0.cluster.is_some()
    }

    /// This replica's name and the partitions it holds (`None` without replicas).
    pub fn partitions_held(&self) -> Option<(String, Vec<u32>)> {
        let c = self.0.cluster.as_ref()?;
        let held = c.held();
        let list = (0..cluster::PARTITIONS)
            .filter(|p| held & (1 << p) != 0)
            .collect();
        Some((c.config.replica.clone(), list))
    }

    /// Events of non-saga streams as this process learns them from the log
    /// (only with replicas; a single server knows what it wrote).
    pub fn stream_events(&self) -> tokio::sync::broadcast::Receiver<RecordedEvent> {
        self.0.stream_events.subscribe()
    }

    /// Notes an append of this process for the log follower (with replicas).
    pub(crate) fn wrote(&self, id: Uuid, revision: u64) {
        if self.0.cluster.is_some() {
            let mut w = self
                .0
                .written
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let r = w.entry(id).or_insert(revision);
            *r = (*r).max(revision);
        }
    }

    /// Whether this process appended the event at `revision` of an instance
    /// (forgotten once the follower reaches the last such event).
    pub(crate) fn written_here(&self, id: Uuid, revision: u64) -> bool {
        let mut w = self
            .0
            .written
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match w.get(&id) {
            Some(&last) if revision < last => true,
            Some(&last) if revision == last => {
                w.remove(&id);
                true
            }
            _ => false,
        }
    }

    /// Renews the lease and moves partitions in and out, every `ttl / 5`.
    pub(crate) async fn cluster_loop(&self) {
        let Some(c) = &self.0.cluster else { return };
        let every = c.config.renew_every();
        // partitions gained whose instances are yet to be resumed (retried until it works)
        let mut to_resume: u64 = 0;
        loop {
            tokio::select! {
                () = self.0.stop.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            match c.round(self.0.store.as_ref(), self.now(), false).await {
                Ok(change) => {
                    if change.lost != 0 {
                        self.release(change.lost);
                    }
                    if change.gained != 0 {
                        tracing::info!(
                            partitions = change.gained.count_ones(),
                            "partitions taken over"
                        );
                    }
                    to_resume = (to_resume | change.gained) & c.held();
                    if to_resume != 0 {
                        match self.resume_partitions(to_resume).await {
                            Ok(_) => to_resume = 0,
                            Err(e) => {
                                tracing::warn!(error = %e, "could not resume the instances of partitions taken over; retrying")
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not renew the replica lease");
                    let dropped = c.fence(self.now());
                    if dropped != 0 {
                        tracing::error!(
                            "the replica lease ran out; driving nothing until it is renewed"
                        );
                        self.release(dropped);
                    }
                }
            }
        }
    }

    /// Forgets the instances of partitions given up: no timers, no tasks, no
    /// state. Effects still in flight record their outcome like any writer would.
    pub(crate) fn release(&self, partitions: u64) {
        let gone: Vec<Arc<Live>> = {
            let mut live = self.lock_live();
            let ids: Vec<Uuid> = live
                .keys()
                .filter(|id| partitions & (1 << cluster::partition(**id)) != 0)
                .copied()
                .collect();
            ids.iter().filter_map(|id| live.remove(id)).collect()
        };
        for l in &gone {
            self.0.timers.set(l.id, []);
            self.0.tasks.withdraw(l.id, &[]);
        }
        tracing::info!(
            partitions = partitions.count_ones(),
            instances = gone.len(),
            "partitions handed over"
        );
    }

    /// Follows the log from `from` and acts on what other replicas wrote: new
    /// inputs of the instances this one drives, workflows published, tokens.
    pub(crate) async fn follow_log(&self, mut from: Option<u64>) {
        let mut head = self.0.store.head();
        loop {
            head.borrow_and_update();
            match self.0.store.read_all_refs(from, 512).await {
                Ok(batch) if !batch.is_empty() => {
                    from = batch.last().map(|e| e.position);
                    self.learn(batch).await;
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "could not follow the log; retrying");
                    tokio::select! {
                        () = self.0.stop.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    continue;
                }
            }
            tokio::select! {
                () = self.0.stop.cancelled() => return,
                changed = head.changed() => if changed.is_err() { return },
            }
        }
    }

    pub(crate) async fn learn(&self, batch: Vec<crate::store::EventRef>) {
        // the newest revision seen per instance driven here
        let mut moved: HashMap<Uuid, u64> = HashMap::new();
        for e in batch {
            if let Some(id) = e.stream.strip_prefix("saga-") {
                if let Ok(id) = Uuid::parse_str(id) {
                    if e.event_type == crate::store::STREAM_REMOVED {
                        // removed by retention (EventStoreDB's marker): nothing to take in
                        self.lock_live().remove(&id);
                        moved.remove(&id);
                        continue;
                    }
                    // (asked first, so the note of an append here is dropped whoever drives it)
                    if !self.written_here(id, e.revision) && self.drives(id) {
                        let r = moved.entry(id).or_default();
                        *r = (*r).max(e.revision);
                    }
                }
                continue;
            }
            if e.stream == cluster::STREAM {
                continue;
            }
            // the few events others keep state from are read whole
            let whole = match self.0.store.read_stream(&e.stream, e.revision).await {
                Ok(events) => events.into_iter().next(),
                Err(err) => {
                    tracing::warn!(stream = %e.stream, error = %err, "could not read an event another replica wrote");
                    None
                }
            };
            if let Some(whole) = whole.filter(|w| w.revision == e.revision) {
                if whole.stream.starts_with("workflow-") {
                    self.0.registry.learn(&whole);
                }
                let _ = self.0.stream_events.send(whole);
            }
        }
        for (id, revision) in moved {
            if let Err(e) = self.catch_up(id, Some(revision)).await {
                tracing::warn!(instance_id = %id, error = %e, "could not take in another replica's events");
            }
        }
    }
}
