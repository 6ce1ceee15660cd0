//! The seam between the manager and the backends that run attempts: each
//! backend (the local node agent, Slurm) takes [`ToAgent`] messages and feeds
//! [`FromAgent`] messages back into the manager's one inbox as
//! [`LinkEvent`](super::agent_link::LinkEvent)s.

use crate::proto::ToAgent;

/// One backend, as the manager sees it.
pub trait BackendLink: Send + Sync {
    /// True when the message was handed to the backend.
    fn send(&self, msg: ToAgent) -> bool;
    /// Whether launches can be handed over now.
    fn connected(&self) -> bool;
}
