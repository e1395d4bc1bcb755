//! The measurement loop: time-based warm-up, then adaptive sampling until the median is known
//! well enough (or time runs out).

pub mod sampler;

pub use sampler::{Sampler, Stop};
