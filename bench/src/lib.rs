//! What the benchmark (`hookline-bench`) and the fault suite's driver (`hookline-chaos`)
//! share: starting and faulting the broker, raw SQL on its cluster, and the HTTP load.

pub mod baseline;
pub mod broker;
pub mod isolation;
pub mod load;
