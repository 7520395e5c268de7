//! The dashboard's components, one per file.

mod connection;
mod detail;
mod events;
mod hives;
mod summary;
mod widgets;
mod workers;

pub use connection::ConnectionBadge;
pub use detail::NodeDetail;
pub use events::EventLog;
pub use hives::HiveTable;
pub use summary::Summary;
pub use workers::WorkerTable;
