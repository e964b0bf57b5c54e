//! Generated protobuf and gRPC code, included in exactly this one place.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

pub mod codec;

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

/// JSON claims → `google.protobuf.Struct`.
pub fn json_to_struct(map: serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: map
            .into_iter()
            .map(|(k, v)| (k, json_to_value(v)))
            .collect(),
    }
}

fn json_to_value(v: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    use serde_json::Value as J;
    let kind = match v {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        J::String(s) => Kind::StringValue(s),
        J::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.into_iter().map(json_to_value).collect(),
        }),
        J::Object(o) => Kind::StructValue(json_to_struct(o)),
    };
    prost_types::Value { kind: Some(kind) }
}
