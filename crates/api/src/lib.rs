//! Generated protobuf and tonic code for `caselog.v1`, and the encoded descriptor set for
//! server reflection. Nothing else lives here: conversions belong to the server.

#![allow(missing_debug_implementations, clippy::unwrap_used, clippy::large_enum_variant)]

pub mod v1 {
    tonic::include_proto!("caselog.v1");
}

/// Encoded `FileDescriptorSet` of every caselog proto, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/caselog_descriptor.bin"));
