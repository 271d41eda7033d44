//! Actions run for events: trigger scripts.

pub mod trigger;

pub use trigger::{Dispatcher, TriggerJob, TriggerOutcome};
