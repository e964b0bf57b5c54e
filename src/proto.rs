//! Generated protobuf and gRPC code, included in exactly this one place.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// The SPIFFE Workload API (no protobuf package).
pub mod workload {
    tonic::include_proto!("_");
}

/// svid-broker's own services.
pub mod svidbroker {
    pub mod v1 {
        tonic::include_proto!("svidbroker.v1");
    }
}

/// SPIRE APIs we call as a client (the agent's Delegated Identity API).
pub mod spire {
    pub mod api {
        pub mod types {
            tonic::include_proto!("spire.api.types");
        }
        pub mod agent {
            pub mod delegatedidentity {
                pub mod v1 {
                    tonic::include_proto!("spire.api.agent.delegatedidentity.v1");
                }
            }
        }
    }
}

/// The encoded descriptor set of every proto, for the reflection service.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/svid_broker_descriptor.bin"));
