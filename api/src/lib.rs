//! berth-api: the HTTP edges of berth. Only this crate knows wire formats:
//! it turns requests into core commands and projections into responses, and
//! maps domain rejections to each client's conventions.

#![recursion_limit = "256"]

pub mod admin;
pub mod docker;
pub mod portal;
