//! The HTTP routes, one module per resource.

pub mod audit;
pub mod environments;
pub mod keys;
pub mod leases;
pub mod plans;
pub mod roles;
pub mod rotation;
pub mod secrets;
pub mod sys;
pub mod system;
pub mod verify;
pub mod webhooks;
