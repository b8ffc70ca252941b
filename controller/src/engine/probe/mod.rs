//! Steady-state probes: one observation of the system under test per call, as a
//! [`Sample`]. HTTP(S) (a request, its status and optionally its body), TCP connect, a
//! command on the controller's host, and a PromQL instant query (over the same HTTP
//! client). Every call is bounded by the probe's timeout.

pub mod http;
pub mod policy;
pub mod url;

use std::time::{Duration, Instant};

use serde::Serialize;

use self::http::{Answer, Exchange};
use crate::engine::experiment::{ExecProbe, HttpProbe, Probe, PromqlProbe, TcpProbe};
use crate::engine::probe::policy::ProbeDestinations;
use crate::engine::probe::url::{ProbeUrl, parse_address, parse_url};

/// One observation. `at_ms` counts from the start of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub at_ms: u64,
    pub success: bool,
    /// Succeeded and within the tolerance's `latency_max`.
    pub healthy: bool,
    pub latency_ms: f64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// Bodies beyond this are not read: a probe needs the status and a match, not the page.
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// Runs the probe once; `Err` carries why it failed.
pub async fn observe(probe: &Probe) -> (Duration, Result<(), String>) {
    let started = Instant::now();
    let outcome = match tokio::time::timeout(probe.timeout, observe_unbounded(probe)).await {
        Ok(outcome) => outcome,
        Err(_) => Err(format!("no answer within {:?}", probe.timeout)),
    };
    (started.elapsed(), outcome)
}

async fn observe_unbounded(probe: &Probe) -> Result<(), String> {
    let destinations = probe.connect_policy.as_deref();
    if let Some(http) = &probe.http {
        http_probe(http, destinations).await
    } else if let Some(tcp) = &probe.tcp {
        tcp_probe(tcp, destinations).await
    } else if let Some(exec) = &probe.exec {
        exec_probe(exec).await
    } else if let Some(promql) = &probe.promql {
        promql_probe(promql, destinations).await
    } else {
        Err("the probe has no kind".into())
    }
}

async fn tcp_probe(p: &TcpProbe, destinations: Option<&ProbeDestinations>) -> Result<(), String> {
    let (host, port) = parse_address(&p.address)?;
    http::connect(&host, port, destinations).await.map(drop)
}

async fn http_probe(p: &HttpProbe, destinations: Option<&ProbeDestinations>) -> Result<(), String> {
    let url = parse_url(&p.url)?;
    let answer = http::send(&Exchange {
        url: &url,
        method: p.method.as_http(),
        headers: &p.headers,
        bearer_token_file: p.bearer_token_file.as_deref(),
        ca_file: p.ca_file.as_deref(),
        destinations,
        body_limit: MAX_RESPONSE_BYTES,
    })
    .await?;
    if !p.expect_status.contains(&answer.status) {
        return Err(format!(
            "status {} (expected {:?})",
            answer.status, p.expect_status
        ));
    }
    if let Some(pattern) = &p.body_matches {
        let body = answer.body.ok_or_else(|| {
            format!("the body is larger than {MAX_RESPONSE_BYTES} bytes: not matched")
        })?;
        // The body is not quoted: it may hold what the submitter of the run should not see.
        if !pattern.is_match(&String::from_utf8_lossy(&body)) {
            return Err(format!(
                "the body ({} bytes) does not match /{}/",
                body.len(),
                pattern.as_str()
            ));
        }
    }
    Ok(())
}

async fn exec_probe(p: &ExecProbe) -> Result<(), String> {
    let (program, args) = p.command.split_first().ok_or("empty command")?;
    let output = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(format!("{}: {}", output.status, stderr.trim()))
    }
}

async fn promql_probe(
    p: &PromqlProbe,
    destinations: Option<&ProbeDestinations>,
) -> Result<(), String> {
    let url = query_url(&parse_url(&p.url)?, &p.query);
    let answer = http::send(&Exchange {
        url: &url,
        method: hyper::Method::GET,
        headers: &p.headers,
        bearer_token_file: p.bearer_token_file.as_deref(),
        ca_file: p.ca_file.as_deref(),
        destinations,
        body_limit: MAX_RESPONSE_BYTES,
    })
    .await?;
    let value = sample_of_answer(&answer)?;
    if p.min.is_some_and(|min| value < min) || p.max.is_some_and(|max| value > max) {
        return Err(format!("value {value} outside [{:?}, {:?}]", p.min, p.max));
    }
    Ok(())
}

/// `BASE/api/v1/query?query=…` (a base URL may have a path prefix, e.g. `/prometheus`).
fn query_url(base: &ProbeUrl, query: &str) -> ProbeUrl {
    ProbeUrl {
        path: format!("{}/api/v1/query", base.path.trim_end_matches('/')),
        query: Some(format!("query={}", percent_encode(query))),
        ..base.clone()
    }
}

/// The sample of a 200 answer; otherwise Prometheus' own error (`bad_data: parse error…`).
fn sample_of_answer(answer: &Answer) -> Result<f64, String> {
    let body = answer
        .body
        .as_ref()
        .ok_or_else(|| format!("prometheus' answer is larger than {MAX_RESPONSE_BYTES} bytes"))?;
    let text = String::from_utf8_lossy(body);
    if answer.status != 200 {
        let json: Option<serde_json::Value> = serde_json::from_str(&text).ok();
        return Err(match json.as_ref().and_then(|j| j["error"].as_str()) {
            Some(error) => format!(
                "prometheus answered {} ({}): {error}",
                answer.status,
                json.as_ref()
                    .and_then(|j| j["errorType"].as_str())
                    .unwrap_or("error")
            ),
            None => format!("prometheus answered {}", answer.status),
        });
    }
    first_sample_value(&text)
}

/// The value of the first vector sample (or the scalar) of an instant query answer.
fn first_sample_value(body: &str) -> Result<f64, String> {
    let json: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("prometheus answer: {e}"))?;
    let data = &json["data"];
    let pair = match data["resultType"].as_str() {
        Some("vector") => &data["result"][0]["value"],
        Some("scalar") => &data["result"],
        other => return Err(format!("unsupported result type {other:?}")),
    };
    pair[1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| "the query returned no sample".to_string())
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_prometheus_answers() {
        let vector = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1.5,"0.25"]}]}}"#;
        assert_eq!(first_sample_value(vector).unwrap(), 0.25);
        let scalar = r#"{"status":"success","data":{"resultType":"scalar","result":[1.5,"3"]}}"#;
        assert_eq!(first_sample_value(scalar).unwrap(), 3.0);
        let empty = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert!(first_sample_value(empty).is_err());
        assert_eq!(percent_encode("up{job=\"a\"}"), "up%7Bjob%3D%22a%22%7D");
    }
}
