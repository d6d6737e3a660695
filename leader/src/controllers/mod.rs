//! Controllers: pure functions from desired and observed state (and `now`) to actions
//! ([`replicas`]), and the loop that feeds them from the store and writes their actions back
//! ([`run`]).

pub mod replicas;
pub mod run;
