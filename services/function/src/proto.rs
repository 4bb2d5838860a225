//! Generated from `proto/function.proto`.
#![allow(clippy::all, missing_docs)]
tonic::include_proto!("baetyl");
