//! The API's paths (IC interface specification) and the endpoint class each belongs to.
//!
//! Routing is a pure function of method and path so that a request is classified, and
//! admitted or refused, before anything else about it (headers aside) is looked at.

use std::cell::RefCell;

use icn_codecs::ic::principal::PRINCIPAL_TEXT_CHARS_MAX;
use icn_codecs::ic::Principal;

use super::backend::CallVersion;

/// Admission classes: each has its own queue and concurrency limit, so a flood of one kind
/// (say, read_state polling) cannot starve another (queries).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EndpointClass {
    Call,
    Query,
    ReadState,
    Status,
}

impl EndpointClass {
    pub const ALL: [EndpointClass; 4] = [
        EndpointClass::Call,
        EndpointClass::Query,
        EndpointClass::ReadState,
        EndpointClass::Status,
    ];

    pub fn label(self) -> &'static str {
        match self {
            EndpointClass::Call => "call",
            EndpointClass::Query => "query",
            EndpointClass::ReadState => "read_state",
            EndpointClass::Status => "status",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// A recognised request target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Status,
    Call(CallVersion, Principal),
    Query(Principal),
    CanisterReadState(Principal),
    SubnetReadState(Principal),
    Metrics,
    Health,
}

impl Route {
    /// The admission class, or `None` for the operator endpoints (/metrics, /health), which
    /// are cheap, bodiless and must keep answering under overload.
    pub fn class(self) -> Option<EndpointClass> {
        match self {
            Route::Status => Some(EndpointClass::Status),
            Route::Call(..) => Some(EndpointClass::Call),
            Route::Query(_) => Some(EndpointClass::Query),
            Route::CanisterReadState(_) | Route::SubnetReadState(_) => {
                Some(EndpointClass::ReadState)
            }
            Route::Metrics | Route::Health => None,
        }
    }

    /// Whether the route takes a CBOR body (POST) rather than none (GET).
    pub fn is_post(self) -> bool {
        !matches!(self, Route::Status | Route::Metrics | Route::Health)
    }
}

/// Why a path is not served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteError {
    /// No such endpoint: 404.
    NotFound,
    /// A known endpoint with another method: 405 (the allowed method is named).
    MethodNotAllowed(&'static str),
    /// The id in the path is not a principal: 400 with the reason.
    BadPrincipal(String),
}

/// Maps a method and a path (without query string) to a route.
pub fn route(method: &http::Method, path: &str) -> Result<Route, RouteError> {
    let route = match path {
        "/api/v2/status" => Route::Status,
        "/metrics" => Route::Metrics,
        "/health" => Route::Health,
        _ => api_route(path)?,
    };
    let expected = if route.is_post() {
        http::Method::POST
    } else {
        http::Method::GET
    };
    if *method == expected || (expected == http::Method::GET && *method == http::Method::HEAD) {
        Ok(route)
    } else if route.is_post() {
        Err(RouteError::MethodNotAllowed("POST"))
    } else {
        Err(RouteError::MethodNotAllowed("GET"))
    }
}

fn api_route(path: &str) -> Result<Route, RouteError> {
    let mut parts = path
        .strip_prefix("/api/")
        .ok_or(RouteError::NotFound)?
        .split('/');
    let (Some(version), Some(kind), Some(id), Some(endpoint), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(RouteError::NotFound);
    };
    let v2_or_v3 = matches!(version, "v2" | "v3");
    let known = match (kind, endpoint) {
        ("canister", "call") => matches!(version, "v2" | "v3" | "v4"),
        ("canister", "query" | "read_state") | ("subnet", "read_state") => v2_or_v3,
        _ => false,
    };
    if !known {
        return Err(RouteError::NotFound);
    }
    let id = parse_principal(id)
        .map_err(|e| RouteError::BadPrincipal(format!("{kind} id in the path: {e}")))?;
    Ok(match (kind, endpoint) {
        ("canister", "call") => {
            let version = match version {
                "v2" => CallVersion::V2,
                "v3" => CallVersion::V3,
                _ => CallVersion::V4,
            };
            Route::Call(version, id)
        }
        ("canister", "query") => Route::Query(id),
        ("canister", _) => Route::CanisterReadState(id),
        _ => Route::SubnetReadState(id),
    })
}

/// Ids remembered per thread by [`parse_principal`]: a fixed number, so remote input cannot
/// grow the cache, and enough for the few canisters that most requests go to.
const PRINCIPAL_CACHE_SLOTS: usize = 8;

/// Texts that parsed as principals, and what they parsed to (round-robin replacement).
struct PrincipalCache {
    slots: [Option<([u8; PRINCIPAL_TEXT_CHARS_MAX], u8, Principal)>; PRINCIPAL_CACHE_SLOTS],
    next: usize,
}

thread_local! {
    static PRINCIPALS: RefCell<PrincipalCache> = const {
        RefCell::new(PrincipalCache {
            slots: [None; PRINCIPAL_CACHE_SLOTS],
            next: 0,
        })
    };
}

/// [`Principal::from_text`] through a small per-thread cache. Decoding the base32, the CRC-32
/// and the canonical-form check cost more than the rest of routing together, and under a
/// flood every request is routed before it is refused; clients mostly name a few canisters.
/// Only texts that parsed are remembered, so errors are always computed afresh.
fn parse_principal(text: &str) -> Result<Principal, icn_codecs::ic::PrincipalError> {
    let bytes = text.as_bytes();
    let cached = PRINCIPALS.with(|cache| {
        cache
            .borrow()
            .slots
            .iter()
            .flatten()
            .find_map(|(stored, len, principal)| {
                (stored[..usize::from(*len)] == *bytes).then_some(*principal)
            })
    });
    if let Some(principal) = cached {
        return Ok(principal);
    }
    let principal = Principal::from_text(text)?;
    // from_text refuses texts longer than a slot, so every text that parsed fits one.
    let mut stored = [0u8; PRINCIPAL_TEXT_CHARS_MAX];
    stored[..bytes.len()].copy_from_slice(bytes);
    let len = bytes.len() as u8;
    PRINCIPALS.with(|cache| {
        let mut cache = cache.borrow_mut();
        let slot = cache.next;
        cache.slots[slot] = Some((stored, len, principal));
        cache.next = (slot + 1) % PRINCIPAL_CACHE_SLOTS;
    });
    Ok(principal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;
    use proptest::prelude::*;

    proptest! {
        /// Paths are remote input: any path routes or is refused, never panics, and a route
        /// found always re-renders to a path that routes to it again.
        #[test]
        fn any_path_routes_or_is_refused(path in "(/[a-z0-9v-]{0,30}){0,6}", post in any::<bool>()) {
            let method = if post { Method::POST } else { Method::GET };
            if let Ok(Route::Query(id)) = route(&method, &path) {
                let again = format!("/api/v2/canister/{id}/query");
                prop_assert_eq!(route(&Method::POST, &again), Ok(Route::Query(id)));
            }
        }

        #[test]
        fn arbitrary_bytes_as_path_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let path = String::from_utf8_lossy(&bytes);
            let _ = route(&Method::POST, &path);
        }
    }

    const CANISTER: &str = "rwlgt-iiaaa-aaaaa-aaaaa-cai";

    #[test]
    fn every_spec_path_routes_to_its_class() {
        let id = Principal::from_text(CANISTER).unwrap();
        let cases = [
            ("/api/v2/canister/ID/call", Route::Call(CallVersion::V2, id)),
            ("/api/v3/canister/ID/call", Route::Call(CallVersion::V3, id)),
            ("/api/v4/canister/ID/call", Route::Call(CallVersion::V4, id)),
            ("/api/v2/canister/ID/query", Route::Query(id)),
            ("/api/v3/canister/ID/query", Route::Query(id)),
            (
                "/api/v2/canister/ID/read_state",
                Route::CanisterReadState(id),
            ),
            (
                "/api/v3/canister/ID/read_state",
                Route::CanisterReadState(id),
            ),
            ("/api/v2/subnet/ID/read_state", Route::SubnetReadState(id)),
            ("/api/v3/subnet/ID/read_state", Route::SubnetReadState(id)),
        ];
        for (path, expected) in cases {
            let path = path.replace("ID", CANISTER);
            assert_eq!(route(&Method::POST, &path), Ok(expected), "{path}");
            assert!(expected.class().is_some());
        }
        assert_eq!(route(&Method::GET, "/api/v2/status"), Ok(Route::Status));
        assert_eq!(route(&Method::HEAD, "/health"), Ok(Route::Health));
        assert_eq!(route(&Method::GET, "/metrics"), Ok(Route::Metrics));
        assert_eq!(Route::Metrics.class(), None);
    }

    #[test]
    fn cached_ids_parse_as_uncached_ones_and_bad_ids_stay_refused() {
        // More distinct ids than the cache holds, each routed twice, interleaved with a bad id
        // that differs from a good one in its checksum only.
        let ids: Vec<Principal> = (0..3 * PRINCIPAL_CACHE_SLOTS as u64)
            .map(|n| Principal::from_slice(&n.to_be_bytes()).unwrap())
            .collect();
        for _ in 0..2 {
            for id in &ids {
                let text = id.to_string();
                assert_eq!(parse_principal(&text), Ok(*id));
                assert_eq!(parse_principal(&text), Principal::from_text(&text));
                let mut bad = text.clone().into_bytes();
                let last = bad.len() - 1;
                bad[last] = if bad[last] == b'a' { b'b' } else { b'a' };
                let bad = String::from_utf8(bad).unwrap();
                assert!(parse_principal(&bad).is_err(), "{bad}");
                assert_eq!(parse_principal(&bad), Principal::from_text(&bad));
            }
        }
        assert!(parse_principal(&"a".repeat(200)).is_err());
    }

    #[test]
    fn unknown_paths_versions_and_methods_are_refused() {
        let not_found = [
            "/",
            "/api/v1/status",
            "/api/v3/status",
            "/api/v4/canister/aaaaa-aa/query",
            "/api/v4/subnet/aaaaa-aa/read_state",
            "/api/v2/canister/aaaaa-aa/call/extra",
            "/api/v2/canister/aaaaa-aa",
            "/api/v2/node/aaaaa-aa/read_state",
        ];
        for path in not_found {
            assert_eq!(
                route(&Method::POST, path).err(),
                Some(RouteError::NotFound),
                "{path}"
            );
        }
        assert_eq!(
            route(&Method::GET, "/api/v2/canister/aaaaa-aa/call"),
            Err(RouteError::MethodNotAllowed("POST"))
        );
        assert_eq!(
            route(&Method::POST, "/api/v2/status"),
            Err(RouteError::MethodNotAllowed("GET"))
        );
        match route(&Method::POST, "/api/v2/canister/not-a-principal/call") {
            Err(RouteError::BadPrincipal(message)) => assert!(message.contains("canister id")),
            other => panic!("{other:?}"),
        }
    }
}
