//! Reads that answer from the read models, and the health the API reports.

use super::*;

impl Runtime {
    /// Instances from the read model, newest first, one page at a time.
    /// Refuses input fields that no workflow (or not the one named) declares
    /// searchable: only declared fields are indexed.
    pub async fn search(&self, filter: &InstanceFilter) -> Result<Page<InstanceRow>, RuntimeError> {
        let rm = self.read_models()?;
        for (field, _) in &filter.input {
            let workflow = filter.workflow.as_deref();
            if rm.declaring(field, workflow).await?.is_empty() {
                let elsewhere = match workflow {
                    Some(_) => rm.declaring(field, None).await?,
                    None => Vec::new(),
                };
                return Err(RuntimeError::NotSearchable {
                    field: field.clone(),
                    workflow: filter.workflow.clone(),
                    elsewhere,
                });
            }
        }
        Ok(rm.search(filter).await?)
    }

    /// An order from the orders read model.
    pub async fn order(&self, order_id: &str) -> Result<Option<OrderRow>, RuntimeError> {
        Ok(self.read_models()?.order(order_id).await?)
    }

    /// A customer's orders from the read model, newest first.
    pub async fn customer_orders(
        &self,
        customer_id: &str,
        after: Option<&Cursor>,
        limit: u32,
    ) -> Result<Page<OrderRow>, RuntimeError> {
        Ok(self
            .read_models()?
            .customer_orders(customer_id, after, limit)
            .await?)
    }

    /// Waits until the read models hold every event stored before this call
    /// (read-your-writes); false if `timeout` passed first.
    pub async fn catch_up_read_models(&self, timeout: Duration) -> Result<bool, RuntimeError> {
        let p = self.read_models()?;
        let head = *self.0.store.head().borrow();
        Ok(match head {
            Some(h) => p.wait_for(h, timeout).await,
            None => true,
        })
    }

    /// How many positions of the log the read models have yet to apply (`None` without read models).
    pub fn read_model_lag(&self) -> Option<u64> {
        let p = self.0.projections.as_ref()?;
        let head = (*self.0.store.head().borrow()).unwrap_or(0);
        Some(head.saturating_sub(p.applied().unwrap_or(0)))
    }

    /// Why the event store refused the last append, if it did within
    /// [`WRITE_FAILURE_WINDOW`] and none has succeeded since. The window lets a
    /// server that takes no traffic (because it said it was not ready) say it
    /// is ready again once the cause is gone; the next refusal says otherwise.
    pub fn store_write_failure(&self) -> Option<String> {
        self.0
            .write_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .filter(|(at, _)| at.elapsed() < WRITE_FAILURE_WINDOW)
            .map(|(_, e)| e.clone())
    }

    /// How long the read models have been failing to catch up, and why (`None` while they keep up).
    pub fn read_model_stall(&self) -> Option<(Duration, String)> {
        self.0.projections.as_ref()?.stalled()
    }

    /// Whether the event store answers a read.
    pub async fn store_reachable(&self) -> Result<(), RuntimeError> {
        self.0.store.read_stream("$readiness-probe", 0).await?;
        Ok(())
    }

    pub(crate) fn read_models(&self) -> Result<&Projections, RuntimeError> {
        self.0
            .projections
            .as_deref()
            .ok_or(RuntimeError::NoReadModels)
    }

    /// Timers armed and not yet fired, across all instances.
    pub fn pending_timers(&self) -> usize {
        self.0.timers.pending()
    }

    /// Instances held in memory (those that have not ended).
    pub fn live_instances(&self) -> usize {
        self.lock_live().len()
    }
}
