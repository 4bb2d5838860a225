//! The containerd engine (issue 11), being built. What is here and tested: [`spec`], the OCI runtime spec an
//! instance's container gets (checked with runc in `tests/oci.rs`). Not here yet: the gRPC client (import of
//! the baked images under a lease, containers, tasks, logs, stop, leftovers), so `mode: containerd` still
//! fails at start with a clear message.

pub mod spec;
