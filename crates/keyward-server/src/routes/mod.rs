//! The HTTP routes, one module per resource.

pub mod audit;
pub mod keys;
pub mod system;
pub mod verify;
