//! The containerd engine (issue 11), being built. What is here and tested (`tests/oci.rs`, against runc and a
//! real containerd 1.6): [`spec`], the OCI runtime spec an instance's container gets, and [`import`], the
//! registry-less import of the baked image layout (content under a lease, image records, snapshots + diff).
//! Not here yet: containers, tasks, logs, stop and leftovers behind the `Engine` trait, so `mode: containerd`
//! still fails at start with a clear message.

pub mod import;
pub mod spec;
