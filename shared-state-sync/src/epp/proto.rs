//! Envoy's ext_proc messages in and out: reading headers and the GAIE subset hint from a
//! `ProcessingRequest`, and building each `ProcessingResponse` the picker sends (header
//! and body mutations, the `envoy.lb` dynamic metadata, local replies). Plain functions,
//! no state.

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{
    HeaderMap, HeaderValue, HeaderValueOption, Metadata,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    body_mutation, processing_response, BodyMutation, BodyResponse, CommonResponse, HeaderMutation,
    HeadersResponse, ImmediateResponse, ProcessingResponse, TrailersResponse,
};
use envoy_types::pb::google::protobuf::{value, Struct, Value};
use kvgate_engine::headers::DESTINATION_ENDPOINT;
use kvgate_engine::stream::REPLY_HEADERS;
use kvgate_engine::Reply;
use std::collections::HashMap;

/// GAIE's metadata namespace for the picked endpoints (request) and the served one
/// (response).
pub const LB_NAMESPACE: &str = "envoy.lb";
/// GAIE's metadata namespace of the subset hint the data plane may send.
pub const SUBSET_NAMESPACE: &str = "envoy.lb.subset_hint";
/// GAIE's key of the subset hint: the endpoints (`ip:port`) the picker must choose from.
pub const SUBSET_KEY: &str = "x-gateway-destination-endpoint-subset";

/// The headers of an ext_proc header message as (lower-case name, value) pairs. Envoy
/// sends each value in `raw_value` (bytes) or, older versions, in `value`.
pub fn header_pairs(map: Option<&HeaderMap>) -> Vec<(String, String)> {
    map.map(|m| {
        m.headers
            .iter()
            .map(|h| {
                let v = if h.raw_value.is_empty() {
                    h.value.clone()
                } else {
                    String::from_utf8_lossy(&h.raw_value).into_owned()
                };
                (h.key.to_ascii_lowercase(), v)
            })
            .collect()
    })
    .unwrap_or_default()
}

/// One header's value, by name (case-insensitive).
pub fn header<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The GAIE subset hint of the request's metadata: `None` when the data plane sent none
/// (pick from the whole pool), else the endpoints allowed (possibly none).
pub fn subset_hint(metadata: Option<&Metadata>) -> Option<Vec<String>> {
    let ns = metadata?.filter_metadata.get(SUBSET_NAMESPACE)?;
    let v = ns.fields.get(SUBSET_KEY)?;
    let list = match &v.kind {
        Some(value::Kind::ListValue(l)) => l
            .values
            .iter()
            .filter_map(|v| match &v.kind {
                Some(value::Kind::StringValue(s)) => Some(s.clone()),
                _ => None,
            })
            .collect(),
        Some(value::Kind::StringValue(s)) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    };
    Some(list)
}

fn set_header(name: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: name.to_string(),
            value: String::new(),
            raw_value: value.as_bytes().to_vec(),
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..HeaderValueOption::default()
    }
}

/// What the picker changes on one message: headers to set and remove, a new body.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Mutation {
    /// Headers to set (replacing any value).
    pub set: Vec<(String, String)>,
    /// Headers to remove.
    pub remove: Vec<String>,
    /// A replacement body (`content-length` is set to its size).
    pub body: Option<Vec<u8>>,
    /// Re-match the route (the headers changed).
    pub clear_route_cache: bool,
}

impl Mutation {
    fn common(self) -> Option<CommonResponse> {
        if self == Mutation::default() {
            return None;
        }
        let mut set: Vec<HeaderValueOption> =
            self.set.iter().map(|(n, v)| set_header(n, v)).collect();
        let body_mutation = self.body.map(|b| {
            set.push(set_header("content-length", &b.len().to_string()));
            BodyMutation {
                mutation: Some(body_mutation::Mutation::Body(b)),
            }
        });
        let header_mutation = if set.is_empty() && self.remove.is_empty() {
            None
        } else {
            Some(HeaderMutation {
                set_headers: set,
                remove_headers: self.remove,
            })
        };
        Some(CommonResponse {
            header_mutation,
            body_mutation,
            clear_route_cache: self.clear_route_cache,
            ..CommonResponse::default()
        })
    }
}

/// Which message a response answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The request headers.
    RequestHeaders,
    /// A request body message.
    RequestBody,
    /// The request trailers.
    RequestTrailers,
    /// The response headers.
    ResponseHeaders,
    /// A response body message.
    ResponseBody,
    /// The response trailers.
    ResponseTrailers,
}

/// The answer to a message of `phase` applying `m`, with the GAIE destination metadata
/// when `m` sets the destination header.
pub fn answer(phase: Phase, m: Mutation) -> ProcessingResponse {
    let destination = m
        .set
        .iter()
        .find(|(n, _)| n == DESTINATION_ENDPOINT)
        .map(|(_, v)| v.clone());
    let common = m.common();
    let headers = || HeadersResponse {
        response: common.clone(),
    };
    let body = || BodyResponse {
        response: common.clone(),
    };
    let response = match phase {
        Phase::RequestHeaders => processing_response::Response::RequestHeaders(headers()),
        Phase::ResponseHeaders => processing_response::Response::ResponseHeaders(headers()),
        Phase::RequestBody => processing_response::Response::RequestBody(body()),
        Phase::ResponseBody => processing_response::Response::ResponseBody(body()),
        Phase::RequestTrailers => {
            processing_response::Response::RequestTrailers(TrailersResponse::default())
        }
        Phase::ResponseTrailers => {
            processing_response::Response::ResponseTrailers(TrailersResponse::default())
        }
    };
    ProcessingResponse {
        response: Some(response),
        dynamic_metadata: destination.map(|d| destination_metadata(&d)),
        ..ProcessingResponse::default()
    }
}

/// `{"envoy.lb": {"x-gateway-destination-endpoint": "<ip:port>,<ip:port>,..."}}`: the same
/// ordered list as the header (GAIE: header and metadata never differ).
pub fn destination_metadata(list: &str) -> Struct {
    let inner = Struct {
        fields: HashMap::from([(
            DESTINATION_ENDPOINT.to_string(),
            Value {
                kind: Some(value::Kind::StringValue(list.to_string())),
            },
        )]),
    };
    Struct {
        fields: HashMap::from([(
            LB_NAMESPACE.to_string(),
            Value {
                kind: Some(value::Kind::StructValue(inner)),
            },
        )]),
    }
}

/// A local reply: the filter's JSON error with its status and headers.
pub fn immediate(r: &Reply) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(processing_response::Response::ImmediateResponse(
            ImmediateResponse {
                status: Some(HttpStatus {
                    code: i32::from(r.status),
                }),
                headers: Some(HeaderMutation {
                    set_headers: REPLY_HEADERS
                        .iter()
                        .map(|(n, v)| set_header(n, v))
                        .collect(),
                    remove_headers: Vec::new(),
                }),
                body: r.body.clone(),
                details: format!("kvgate_{}", r.code),
                ..ImmediateResponse::default()
            },
        )),
        ..ProcessingResponse::default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

    use super::*;
    use envoy_types::pb::google::protobuf::ListValue;

    fn hv(k: &str, raw: &str, value: &str) -> HeaderValue {
        HeaderValue {
            key: k.into(),
            value: value.into(),
            raw_value: raw.as_bytes().to_vec(),
        }
    }

    #[test]
    fn headers_read_raw_value_else_value() {
        let map = HeaderMap {
            headers: vec![hv(":path", "/v1/chat/completions", ""), hv("X-A", "", "b")],
        };
        let p = header_pairs(Some(&map));
        assert_eq!(header(&p, ":path"), Some("/v1/chat/completions"));
        assert_eq!(header(&p, "x-a"), Some("b"));
        assert_eq!(header(&p, "missing"), None);
        assert!(header_pairs(None).is_empty());
    }

    #[test]
    fn destination_goes_to_header_and_envoy_lb_metadata_alike() {
        let m = Mutation {
            set: vec![
                (
                    DESTINATION_ENDPOINT.into(),
                    "10.0.0.1:8000,10.0.0.2:8000".into(),
                ),
                ("x-worker-instance-id".into(), "7".into()),
            ],
            body: Some(b"{}".to_vec()),
            clear_route_cache: true,
            ..Mutation::default()
        };
        let r = answer(Phase::RequestBody, m);
        let md = r.dynamic_metadata.unwrap();
        let Some(value::Kind::StructValue(ns)) = &md.fields[LB_NAMESPACE].kind else {
            panic!("no envoy.lb struct");
        };
        assert_eq!(
            ns.fields[DESTINATION_ENDPOINT].kind,
            Some(value::Kind::StringValue(
                "10.0.0.1:8000,10.0.0.2:8000".into()
            ))
        );
        let Some(processing_response::Response::RequestBody(b)) = r.response else {
            panic!("not a body response");
        };
        let c = b.response.unwrap();
        assert!(c.clear_route_cache);
        let set: Vec<(String, Vec<u8>)> = c
            .header_mutation
            .unwrap()
            .set_headers
            .into_iter()
            .map(|o| {
                let h = o.header.unwrap();
                assert_eq!(
                    o.append_action,
                    HeaderAppendAction::OverwriteIfExistsOrAdd as i32
                );
                (h.key, h.raw_value)
            })
            .collect();
        assert_eq!(
            set,
            vec![
                (
                    DESTINATION_ENDPOINT.into(),
                    b"10.0.0.1:8000,10.0.0.2:8000".to_vec()
                ),
                ("x-worker-instance-id".into(), b"7".to_vec()),
                ("content-length".into(), b"2".to_vec()),
            ]
        );
        assert_eq!(
            c.body_mutation.unwrap().mutation,
            Some(body_mutation::Mutation::Body(b"{}".to_vec()))
        );
    }

    #[test]
    fn an_empty_mutation_answers_without_changes_or_metadata() {
        for phase in [
            Phase::RequestHeaders,
            Phase::RequestBody,
            Phase::ResponseHeaders,
            Phase::ResponseBody,
        ] {
            let r = answer(phase, Mutation::default());
            assert!(r.dynamic_metadata.is_none());
            let common = match r.response.unwrap() {
                processing_response::Response::RequestHeaders(h)
                | processing_response::Response::ResponseHeaders(h) => h.response,
                processing_response::Response::RequestBody(b)
                | processing_response::Response::ResponseBody(b) => b.response,
                other => panic!("{other:?}"),
            };
            assert!(common.is_none(), "{phase:?}");
        }
        assert!(matches!(
            answer(Phase::ResponseTrailers, Mutation::default()).response,
            Some(processing_response::Response::ResponseTrailers(_))
        ));
    }

    #[test]
    fn a_reply_is_an_immediate_response_with_the_json_error() {
        let r = immediate(&Reply {
            status: 429,
            body: br#"{"error":{}}"#.to_vec(),
            code: "no_capacity",
        });
        let Some(processing_response::Response::ImmediateResponse(i)) = r.response else {
            panic!("not immediate");
        };
        assert_eq!(i.status.unwrap().code, 429);
        assert_eq!(i.body, br#"{"error":{}}"#.to_vec());
        assert_eq!(i.details, "kvgate_no_capacity");
        let names: Vec<String> = i
            .headers
            .unwrap()
            .set_headers
            .into_iter()
            .map(|o| o.header.unwrap().key)
            .collect();
        assert_eq!(names, vec!["content-type", "x-kvgate-error"]);
    }

    #[test]
    fn subset_hint_as_list_or_comma_string_and_absent_is_none() {
        let list = |items: &[&str]| Value {
            kind: Some(value::Kind::ListValue(ListValue {
                values: items
                    .iter()
                    .map(|s| Value {
                        kind: Some(value::Kind::StringValue(s.to_string())),
                    })
                    .collect(),
            })),
        };
        let md = |v: Value| Metadata {
            filter_metadata: HashMap::from([(
                SUBSET_NAMESPACE.to_string(),
                Struct {
                    fields: HashMap::from([(SUBSET_KEY.to_string(), v)]),
                },
            )]),
            ..Metadata::default()
        };
        assert_eq!(
            subset_hint(Some(&md(list(&["1.1.1.1:80", "2.2.2.2:80"])))),
            Some(vec!["1.1.1.1:80".to_string(), "2.2.2.2:80".to_string()])
        );
        assert_eq!(
            subset_hint(Some(&md(Value {
                kind: Some(value::Kind::StringValue("1.1.1.1:80, 2.2.2.2:80".into()))
            }))),
            Some(vec!["1.1.1.1:80".to_string(), "2.2.2.2:80".to_string()])
        );
        assert_eq!(subset_hint(Some(&md(list(&[])))), Some(vec![]));
        assert_eq!(subset_hint(Some(&Metadata::default())), None);
        assert_eq!(subset_hint(None), None);
    }
}
