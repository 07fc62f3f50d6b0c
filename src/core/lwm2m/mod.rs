//! The LwM2M layer of the sans-IO core: paths, values, content formats, and the interfaces
//! (registration, device management, information reporting).

pub mod attributes;
pub mod content;
pub mod error;
pub mod links;
pub mod path;
pub mod tree;
pub mod value;
