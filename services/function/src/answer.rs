//! What a rule publishes for one input: the function's result, or v1's error answer
//! (`{"functionMessage": ..., "errorMessage": ..., "errorType": ...}`), always within the hub's message limit.
//!
//! A result or an error answer larger than the hub takes would make the hub drop the rule's connection; the
//! input would then never be acknowledged and come back forever (issue 10's poison input). So a result over the
//! limit becomes an `OutputTooLarge` error, and an error answer's echoed input is cut to fit; the cut one says
//! so with `functionMessage.PayloadLength` (the input's full size in bytes).

use serde_json::{Value, json};

use crate::proto::FunctionMessage;

/// `errorType` of a result larger than the hub's limit.
pub const OUTPUT_TOO_LARGE: &str = "OutputTooLarge";

/// The error answer for `input`, at most `max` bytes, or None if not even the metadata fits (the limit is
/// checked at load to be at least 1k, so only an absurdly long topic or function name gets there).
pub fn error_answer(
    input: &FunctionMessage,
    kind: &str,
    message: &str,
    max: usize,
) -> Option<Vec<u8>> {
    let echoed = String::from_utf8_lossy(&input.payload);
    let full = render(input, &echoed, None, kind, message);
    if full.len() <= max {
        return Some(full);
    }
    // Cut the echoed input first (the longest prefix that fits, on a character boundary), then, if the message
    // alone is too long (an exception quoting the input), the message too.
    let length = Some(input.payload.len());
    let fits = |echo: &str, msg: &str| render(input, echo, length, kind, msg).len() <= max;
    if fits("", message) {
        let end = longest_fit(&echoed, |prefix| fits(prefix, message));
        return Some(render(input, &echoed[..end], length, kind, message));
    }
    if fits("", "") {
        let end = longest_fit(message, |prefix| fits("", prefix));
        return Some(render(input, "", length, kind, &message[..end]));
    }
    None
}

/// The message of an `OutputTooLarge` error.
pub fn too_large(output: usize, max: usize) -> String {
    format!(
        "the function's result of {output} bytes is larger than the hub's message limit of {} (message.length.max)",
        baetyl_sdk::config::ByteSize(max as u64)
    )
}

/// The byte length of the longest prefix of `text` (ending on a character boundary) that `fits`; `fits` holds
/// for the empty prefix and gets more false as the prefix grows.
fn longest_fit(text: &str, fits: impl Fn(&str) -> bool) -> usize {
    // The largest k whose prefix up to the boundary at or below k fits (monotone in k).
    let (mut lo, mut hi) = (0usize, text.len());
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if fits(&text[..floor_boundary(text, mid)]) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    floor_boundary(text, lo)
}

fn floor_boundary(text: &str, mut i: usize) -> usize {
    i = i.min(text.len());
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn render(
    input: &FunctionMessage,
    echoed: &str,
    length: Option<usize>,
    kind: &str,
    message: &str,
) -> Vec<u8> {
    let mut fm = json!({
        "ID": input.id, "QOS": input.qos, "Topic": input.topic,
        "Payload": echoed,
        "Timestamp": input.timestamp, "FunctionName": input.function_name,
        "FunctionInvokeID": input.function_invoke_id,
    });
    if let (Some(n), Value::Object(m)) = (length, &mut fm) {
        m.insert("PayloadLength".into(), json!(n));
    }
    json!({"functionMessage": fm, "errorMessage": message, "errorType": kind})
        .to_string()
        .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(payload: &[u8]) -> FunctionMessage {
        FunctionMessage {
            id: 7,
            qos: 1,
            topic: "sql/in".into(),
            payload: payload.to_vec(),
            timestamp: 1,
            function_name: "f".into(),
            function_invoke_id: "abc".into(),
        }
    }

    fn parse(b: &[u8]) -> Value {
        serde_json::from_slice(b).expect("JSON")
    }

    #[test]
    fn a_small_error_answer_is_v1s_unchanged() {
        let a = error_answer(&input(b"not json"), "PayloadError", "bad", 32 << 10).expect("fits");
        let v = parse(&a);
        assert_eq!(v["functionMessage"]["Payload"], "not json");
        assert!(v["functionMessage"].get("PayloadLength").is_none());
        assert_eq!(v["errorType"], "PayloadError");
        assert_eq!(v["errorMessage"], "bad");
    }

    #[test]
    fn inputs_that_expand_as_json_are_cut_to_the_limit() {
        // Control bytes (6x as JSON), invalid UTF-8 (3x), multi-byte characters, quotes (2x).
        let cases: Vec<Vec<u8>> = vec![
            vec![1u8; 12 << 10],
            vec![0xff; 40 << 10],
            "é漢🙂".repeat(5000).into_bytes(),
            vec![b'"'; 64 << 10],
        ];
        for payload in cases {
            for max in [1024usize, 4096, 32 << 10] {
                let a = error_answer(
                    &input(&payload),
                    "PayloadError",
                    "the payload is not JSON",
                    max,
                )
                .expect("fits");
                assert!(a.len() <= max, "{} > {max}", a.len());
                // The cut is tight: little room is left unused.
                assert!(a.len() + 16 > max, "{} of {max}", a.len());
                let v = parse(&a);
                assert_eq!(v["errorMessage"], "the payload is not JSON");
                assert_eq!(v["functionMessage"]["PayloadLength"], payload.len());
                let echoed = v["functionMessage"]["Payload"].as_str().expect("text");
                let full = String::from_utf8_lossy(&payload);
                assert!(!echoed.is_empty() && full.starts_with(echoed));
            }
        }
    }

    #[test]
    fn a_message_that_quotes_the_input_is_cut_too() {
        let long = "x".repeat(100 << 10);
        let a = error_answer(&input(b"abc"), "ValueError", &long, 4096).expect("fits");
        assert!(a.len() <= 4096);
        let v = parse(&a);
        assert_eq!(v["errorType"], "ValueError");
        assert_eq!(v["functionMessage"]["Payload"], "");
        assert!(v["errorMessage"].as_str().is_some_and(|m| m.len() > 3000));
    }

    #[test]
    fn nothing_when_not_even_the_metadata_fits() {
        assert_eq!(
            error_answer(&input(b"abc"), "PayloadError", "bad", 100),
            None
        );
    }

    #[test]
    fn too_large_names_the_limit_and_its_key() {
        let m = too_large(40_000, 32 << 10);
        assert!(
            m.contains("40000 bytes") && m.contains("32k") && m.contains("message.length.max"),
            "{m}"
        );
    }
}
