//! `STORE`: keeps the event as a `MATCHED` record, readable through the matched-events API.

use super::Channel;
use crate::failure::{Code, Failure};
use crate::properties::{Properties, PropertyError};
use crate::records::RecordStore;
use model::{Action, DeliveryJob, DeliveryStatus};

pub struct StoreChannel {
    records: RecordStore,
}

impl StoreChannel {
    pub fn new(records: RecordStore) -> Self {
        StoreChannel { records }
    }
}

impl Channel for StoreChannel {
    const TYPE: &'static str = "STORE";
    const PROPERTIES: &'static [&'static str] = &[];
    type Config = ();

    fn configure(&self, _: &Properties) -> Result<(), PropertyError> {
        Ok(())
    }

    async fn deliver(&self, job: &DeliveryJob, _: &Action, _: &()) -> Result<(), Failure> {
        self.records
            .record(job, DeliveryStatus::Matched, &[])
            .await
            .map_err(|e| Failure::transient(Code::LocalStorage, e.to_string()))
    }
}
