//! `STORE`: keeps the event as a `MATCHED` record, readable through the matched-events API.

use super::{Channel, Failure, Outcome, CODE_LOCAL_STORAGE};
use crate::records::RecordStore;
use async_trait::async_trait;
use model::{Action, DeliveryJob, DeliveryStatus};

pub struct StoreChannel {
    records: RecordStore,
}

impl StoreChannel {
    pub fn new(records: RecordStore) -> Self {
        StoreChannel { records }
    }
}

#[async_trait]
impl Channel for StoreChannel {
    fn action_type(&self) -> &'static str {
        "STORE"
    }

    async fn deliver(&self, job: &DeliveryJob, _action: &Action) -> Outcome {
        match self.records.record(job, DeliveryStatus::Matched, &[]).await {
            Ok(()) => Outcome::Delivered,
            Err(e) => Outcome::Failed(Failure::transient(CODE_LOCAL_STORAGE, e.to_string())),
        }
    }
}
