//! The measurement loop: time-based warm-up, then adaptive sampling until the median is known
//! well enough (or time runs out).

pub mod control;
pub mod sampler;
pub mod settle;

pub use sampler::{Sampler, Stop};
