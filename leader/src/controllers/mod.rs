//! Controllers: pure functions from desired and observed state (and `now`) to actions. The loops
//! that feed them from the store and write their actions back come with the apps issue.

pub mod replicas;
