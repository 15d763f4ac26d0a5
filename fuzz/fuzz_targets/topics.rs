//! The topic list parser: `tower_sse::sse::requested_topics` on any query
//! string, the default authorizers built on it, and `Topics::parse` on any
//! list of names.
//!
//! The input is the query string itself (`/events?INPUT`, when that is a
//! URI), and, split at `&`, a list of names. Each answer is checked against
//! an oracle written here from the rules alone: the WHATWG
//! `application/x-www-form-urlencoded` parser for the query, and the
//! documented alphabet and length of a topic name. An accepted list holds
//! exactly the valid names asked for, sorted and without duplicates; a
//! refusal of the query is a 400.
#![no_main]

#[path = "../common/form.rs"]
mod form;

use std::collections::BTreeSet;

use http::StatusCode;
use libfuzzer_sys::fuzz_target;
use tower_sse::broker::MAX_TOPIC_LEN;
use tower_sse::sse::{any_topic, public_only, requested_topics};
use tower_sse::{Topic, Topics};

/// The documented rule: 1 to `MAX_TOPIC_LEN` bytes of ASCII letters,
/// digits and `- _ . : / @`.
fn valid(name: &str) -> bool {
    (1..=MAX_TOPIC_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/@".contains(&b))
}

/// What a list of names should parse to: `None` for a refusal.
fn expected_set(names: &[String]) -> Option<BTreeSet<String>> {
    if names.is_empty() || !names.iter().all(|n| valid(n)) {
        return None;
    }
    Some(names.iter().cloned().collect())
}

/// Checks an accepted set: exactly `want`, sorted, without duplicates,
/// every member valid and found by `contains`.
fn check_topics(got: &Topics, want: &BTreeSet<String>) {
    let names: Vec<&str> = got.iter().map(Topic::as_str).collect();
    assert!(names.windows(2).all(|w| w[0] < w[1]), "{names:?}");
    assert!(names.iter().all(|n| valid(n)), "{names:?}");
    assert_eq!(got.len(), want.len());
    assert!(names.iter().copied().eq(want.iter().map(String::as_str)));
    assert!(want.iter().all(|n| got.contains(n)));
}

/// `requested_topics` and the authorizers on `/events?QUERY`.
fn check_query(query: &[u8]) {
    let mut uri = b"/events?".to_vec();
    uri.extend_from_slice(query);
    let Ok(uri) = http::Uri::try_from(uri) else {
        return;
    };
    let (parts, ()) = http::Request::get(uri).body(()).unwrap().into_parts();
    let query = parts.uri.query().unwrap_or_default();
    let asked: Vec<String> = form::pairs(query.as_bytes())
        .into_iter()
        .filter(|(key, _)| key == "topic")
        .map(|(_, value)| value)
        .collect();

    let got = requested_topics(&parts);
    match (&got, asked.is_empty(), expected_set(&asked)) {
        (Ok(None), true, _) => {}
        (Ok(Some(topics)), false, Some(want)) => check_topics(topics, &want),
        (Err(rejection), false, None) => {
            assert_eq!(rejection.status(), StatusCode::BAD_REQUEST);
            assert!(!rejection.message().is_empty());
        }
        _ => panic!("query {query:?}: asked {asked:?}, got {got:?}"),
    }

    let public = Topics::parse(["public"]).unwrap();
    match (&got, any_topic(&parts)) {
        (Ok(Some(topics)), Ok(grant)) => assert_eq!(grant.topics(), topics),
        (Ok(None), Ok(grant)) => assert_eq!(grant.topics(), &public),
        (Err(want), Err(rejection)) => assert_eq!(&rejection, want),
        (got, other) => panic!("query {query:?}: {got:?} but any_topic {other:?}"),
    }
    match (&got, public_only(&parts)) {
        (Ok(None), Ok(grant)) => assert_eq!(grant.topics(), &public),
        (Ok(Some(topics)), Ok(grant)) if topics == &public => {
            assert_eq!(grant.topics(), &public)
        }
        (Ok(Some(_)), Err(rejection)) => assert_eq!(rejection.status(), StatusCode::FORBIDDEN),
        (Err(want), Err(rejection)) => assert_eq!(&rejection, want),
        (got, other) => panic!("query {query:?}: {got:?} but public_only {other:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    check_query(data);

    // The same bytes as a list of names: to `Topics::parse`, and
    // percent-encoded into a query, which must come to the same set.
    let names: Vec<String> = if data.is_empty() {
        Vec::new()
    } else {
        data.split(|&b| b == b'&')
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .collect()
    };
    for name in &names {
        assert_eq!(Topic::new(name).is_ok(), valid(name), "{name:?}");
    }
    let parsed = Topics::parse(&names);
    match (&parsed, expected_set(&names)) {
        (Ok(topics), Some(want)) => check_topics(topics, &want),
        (Err(_), None) => {}
        (got, want) => panic!("names {names:?}: got {got:?}, want {want:?}"),
    }
    if names.is_empty() {
        return;
    }
    let mut query = Vec::new();
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            query.extend_from_slice(b"&other=1&");
        }
        query.extend_from_slice(b"topic=");
        query.extend_from_slice(form::encode_all(name.as_bytes()).as_bytes());
    }
    let uri = http::Uri::try_from([b"/events?".as_slice(), &query].concat()).unwrap();
    let (parts, ()) = http::Request::get(uri).body(()).unwrap().into_parts();
    match (requested_topics(&parts), parsed) {
        (Ok(Some(got)), Ok(want)) => assert_eq!(got, want),
        (Err(rejection), Err(_)) => assert_eq!(rejection.status(), StatusCode::BAD_REQUEST),
        (got, want) => panic!("names {names:?}: query gave {got:?}, parse {want:?}"),
    }
});
