//! The dashboard's components, one per file.

mod actions;
mod audit;
mod connection;
mod deployments;
mod detail;
mod drains;
mod events;
mod hives;
mod logs;
mod shutdown;
mod summary;
mod widgets;
mod workers;

pub use actions::{ActionResult, Admin, AdminControl, ClusterActions};
pub use audit::{AuditPanel, Warnings};
pub use connection::ConnectionBadge;
pub use deployments::DeploymentsPanel;
pub use detail::NodeDetail;
pub use drains::DrainsPanel;
pub use events::EventLog;
pub use hives::HiveTable;
pub use logs::{LogPane, LogView};
pub use shutdown::ShutdownPanel;
pub use summary::Summary;
pub use workers::WorkerTable;
