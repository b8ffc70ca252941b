//! Steady-state probes: one observation of the system under test per call, as a
//! [`Sample`]. HTTP (plain HTTP/1.1 GET), TCP connect, a command on the controller's
//! host, and a PromQL instant query. Every call is bounded by the probe's timeout.

use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::experiment::{ExecProbe, HttpProbe, Probe, PromqlProbe, TcpProbe};

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

/// Bodies beyond this are not read: a probe needs the status line, not the page.
const MAX_RESPONSE_BYTES: usize = 1 << 20;

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
    if let Some(http) = &probe.http {
        http_probe(http).await
    } else if let Some(tcp) = &probe.tcp {
        tcp_probe(tcp).await
    } else if let Some(exec) = &probe.exec {
        exec_probe(exec).await
    } else if let Some(promql) = &probe.promql {
        promql_probe(promql).await
    } else {
        Err("the probe has no kind".into())
    }
}

async fn tcp_probe(p: &TcpProbe) -> Result<(), String> {
    TcpStream::connect(&p.address)
        .await
        .map(drop)
        .map_err(|e| format!("connect {}: {e}", p.address))
}

async fn http_probe(p: &HttpProbe) -> Result<(), String> {
    let (status, _) = http_get(&p.url).await?;
    if p.expect_status.contains(&status) {
        Ok(())
    } else {
        Err(format!("status {status}"))
    }
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

async fn promql_probe(p: &PromqlProbe) -> Result<(), String> {
    let url = format!(
        "{}/api/v1/query?query={}",
        p.url.trim_end_matches('/'),
        percent_encode(&p.query)
    );
    let (status, body) = http_get(&url).await?;
    if status != 200 {
        return Err(format!("prometheus answered {status}"));
    }
    let value = first_sample_value(&body)?;
    if p.min.is_some_and(|min| value < min) || p.max.is_some_and(|max| value > max) {
        return Err(format!("value {value} outside [{:?}, {:?}]", p.min, p.max));
    }
    Ok(())
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

/// Splits `http://host[:port]/path` into (host:port, path).
fn split_url(url: &str) -> Result<(String, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("`{url}`: only http:// is supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let address = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !authority.ends_with(']')
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    Ok((address, path.to_string()))
}

/// A GET with `Connection: close`; returns the status and the body.
pub async fn http_get(url: &str) -> Result<(u16, String), String> {
    let (address, path) = split_url(url)?;
    let host = address
        .rsplit_once(':')
        .map_or(address.as_str(), |(h, _)| h);
    let mut stream = TcpStream::connect(&address)
        .await
        .map_err(|e| format!("connect {address}: {e}"))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: chaosctl\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut response = Vec::new();
    (&mut stream)
        .take(MAX_RESPONSE_BYTES as u64)
        .read_to_end(&mut response)
        .await
        .map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| "no HTTP status line".to_string())?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_urls() {
        assert_eq!(
            split_url("http://10.0.0.2/health").unwrap(),
            ("10.0.0.2:80".into(), "/health".into())
        );
        assert_eq!(
            split_url("http://web:8080").unwrap(),
            ("web:8080".into(), "/".into())
        );
        assert!(split_url("https://x/").is_err());
    }

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

    #[tokio::test]
    async fn probes_a_real_loopback_listener() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = socket.read(&mut buf).await.unwrap();
            socket
                .write_all(b"HTTP/1.1 503 Unavailable\r\nContent-Length: 2\r\n\r\nno")
                .await
                .unwrap();
        });
        let (status, body) = http_get(&format!("http://{address}/x")).await.unwrap();
        assert_eq!((status, body.as_str()), (503, "no"));
        server.await.unwrap();
    }
}
