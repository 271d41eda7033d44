//! Actions run for events: trigger scripts.

pub mod trigger;
