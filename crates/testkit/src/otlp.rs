//! Traces as a collector receives them: the OTLP/HTTP protobuf requests a [`Receiver`] recorded,
//! decoded with the protocol's own message types (`opentelemetry-proto`), so a test sees what any
//! collector would.
//!
//! [`Receiver`]: crate::hooks::Receiver

use std::collections::HashMap;

use anyhow::Context;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;

use crate::hooks::Delivery;

/// One exported span, ids in hex as a trace viewer shows them.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportedSpan {
    /// `service.name` of the process that exported it.
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root.
    pub parent_span_id: String,
    /// String, integer and boolean attributes, as text.
    pub attributes: HashMap<String, String>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> Option<String> {
    match v.as_ref()?.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        Value::BoolValue(b) => Some(b.to_string()),
        Value::DoubleValue(d) => Some(d.to_string()),
        _ => None,
    }
}

/// Every span in `requests` (OTLP/HTTP with `content-type: application/x-protobuf`).
pub fn spans(requests: &[Delivery]) -> anyhow::Result<Vec<ExportedSpan>> {
    let mut out = Vec::new();
    for r in requests {
        let kind = r.headers.get("content-type").map(String::as_str).unwrap_or_default();
        anyhow::ensure!(kind == "application/x-protobuf", "an OTLP/HTTP request of type {kind:?}");
        let req = ExportTraceServiceRequest::decode(r.body.as_slice()).context("decoding an OTLP export")?;
        for rs in req.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|res| res.attributes.iter().find(|a| a.key == "service.name"))
                .and_then(|a| text(&a.value))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    out.push(ExportedSpan {
                        service: service.clone(),
                        name: s.name,
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent_span_id: hex(&s.parent_span_id),
                        attributes: s
                            .attributes
                            .iter()
                            .filter_map(|a| Some((a.key.clone(), text(&a.value)?)))
                            .collect(),
                    });
                }
            }
        }
    }
    Ok(out)
}
