//! The probes' HTTP client against real servers: an HTTPS server made here (rustls, a
//! certificate from `chaosctl certs`) that checks the bearer token and a header itself,
//! and Debian's Prometheus 2.42 serving HTTPS. Probes are written as in an experiment
//! file and parsed by chaosctl's own parser, then observed once each, as the runner does.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chaos_tests::agent::make_certs;
use chaos_tests::https_server::{LARGE_BODY_BYTES, TestHttpsServer};
use chaos_tests::prometheus::TestPrometheus;
use chaosctl::engine::experiment::Probe;
use chaosctl::engine::probe::observe;
use chaosctl::engine::probe::policy::ProbeDestinations;

/// One probe (the YAML of its kind, e.g. `http: {...}`) as a whole experiment would have it.
fn probe(kind: &str) -> Result<Probe> {
    let text = format!(
        "\
name: chaos-test-probe
steady_state:
  probes:
    - name: p
      timeout: 10s
      {kind}
method:
  faults:
    - name: k
      target: {{ targets: [\"pid:1\"] }}
      kill: {{}}
"
    );
    let mut experiment = chaosctl::engine::experiment::parse(&text).context(text)?;
    Ok(experiment.steady_state.probes.remove(0))
}

/// The probe's outcome: Ok, or why it failed.
async fn outcome(probe: &Probe) -> Result<(), String> {
    observe(probe).await.1
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_https_probe_trusts_its_ca_file_and_nothing_else() -> Result<()> {
    let (tls, other) = (make_certs()?, make_certs()?);
    let server = TestHttpsServer::start(tls.path()).await?;
    let port = server.address.port();
    let ca = path(&tls.path().join("ca.pem"));

    // The certificate names 127.0.0.1 and localhost: both verify through the CA file.
    for host in ["127.0.0.1", "localhost"] {
        let p = probe(&format!(
            "http: {{ url: \"https://{host}:{port}/health\", ca_file: \"{ca}\" }}"
        ))?;
        assert_eq!(outcome(&p).await, Ok(()), "{host}");
    }
    let seen = server.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(
        seen[0].host.as_deref(),
        Some(format!("127.0.0.1:{port}").as_str())
    );
    assert_eq!(
        seen[1].host.as_deref(),
        Some(format!("localhost:{port}").as_str())
    );
    assert!(
        seen[0]
            .user_agent
            .as_deref()
            .is_some_and(|a| a.starts_with("chaosctl/")),
        "{seen:?}"
    );

    // The system's roots do not know the test CA; another CA is not this one.
    let without = probe(&format!(
        "http: {{ url: \"https://127.0.0.1:{port}/health\" }}"
    ))?;
    let error = outcome(&without).await.unwrap_err();
    eprintln!("without the CA file: {error}");
    assert!(
        error.contains("TLS handshake with 127.0.0.1")
            && error.contains("invalid peer certificate"),
        "{error}"
    );
    let other_ca = path(&other.path().join("ca.pem"));
    let foreign = probe(&format!(
        "http: {{ url: \"https://127.0.0.1:{port}/health\", ca_file: \"{other_ca}\" }}"
    ))?;
    let error = outcome(&foreign).await.unwrap_err();
    assert!(error.contains("invalid peer certificate"), "{error}");
    let missing = probe(&format!(
        "http: {{ url: \"https://127.0.0.1:{port}/health\", ca_file: /nonexistent/ca.pem }}"
    ))?;
    let error = outcome(&missing).await.unwrap_err();
    assert!(
        error.starts_with("ca_file /nonexistent/ca.pem: "),
        "{error}"
    );
    // Not a CA at all: the key file holds no certificate.
    let key = path(&tls.path().join("controller-key.pem"));
    let not_a_ca = probe(&format!(
        "http: {{ url: \"https://127.0.0.1:{port}/health\", ca_file: \"{key}\" }}"
    ))?;
    let error = outcome(&not_a_ca).await.unwrap_err();
    assert!(error.contains("holds no PEM certificate"), "{error}");
    // None of the refused handshakes reached HTTP.
    assert_eq!(server.seen().len(), 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn headers_the_bearer_token_and_the_method_reach_the_server() -> Result<()> {
    let tls = make_certs()?;
    let server = TestHttpsServer::start(tls.path()).await?;
    let port = server.address.port();
    let ca = path(&tls.path().join("ca.pem"));
    let token_file = tempfile::NamedTempFile::new()?;
    std::fs::write(token_file.path(), "token-one\n")?;
    server.expect_token("token-one");
    let secure = probe(&format!(
        "http: {{ url: \"https://localhost:{port}/secure\", ca_file: \"{ca}\", \
         headers: {{ X-Tenant: shop }}, bearer_token_file: \"{}\" }}",
        path(token_file.path())
    ))?;
    assert_eq!(outcome(&secure).await, Ok(()));
    let last = server.seen().pop().context("no request seen")?;
    assert_eq!(last.method, "GET");
    assert_eq!(last.authorization.as_deref(), Some("Bearer token-one"));
    assert_eq!(last.tenant.as_deref(), Some("shop"));

    // The token file is read at every probe: a rotated token is sent from the next one on.
    std::fs::write(token_file.path(), "token-two")?;
    server.expect_token("token-two");
    assert_eq!(outcome(&secure).await, Ok(()));
    let last = server.seen().pop().context("no request seen")?;
    assert_eq!(last.authorization.as_deref(), Some("Bearer token-two"));

    // The server refuses a stale token; the failure names the status, never the token.
    server.expect_token("token-three");
    let error = outcome(&secure).await.unwrap_err();
    assert_eq!(error, "status 401 (expected [200])");
    // Without the header the server refuses too: it checks both.
    server.expect_token("token-two");
    let no_tenant = probe(&format!(
        "http: {{ url: \"https://localhost:{port}/secure\", ca_file: \"{ca}\", \
         bearer_token_file: \"{}\" }}",
        path(token_file.path())
    ))?;
    assert_eq!(
        outcome(&no_tenant).await,
        Err("status 401 (expected [200])".into())
    );
    let empty = tempfile::NamedTempFile::new()?;
    let with_empty = probe(&format!(
        "http: {{ url: \"https://localhost:{port}/secure\", ca_file: \"{ca}\", \
         bearer_token_file: \"{}\" }}",
        path(empty.path())
    ))?;
    let error = outcome(&with_empty).await.unwrap_err();
    assert!(error.ends_with("is empty"), "{error}");
    std::fs::write(empty.path(), "bad\ntoken")?;
    let error = outcome(&with_empty).await.unwrap_err();
    assert!(
        error.contains("characters a header cannot carry") && !error.contains("bad"),
        "{error}"
    );

    // The method: POST where only POST is answered, HEAD seen as HEAD.
    let post = probe(&format!(
        "http: {{ url: \"https://localhost:{port}/only-post\", ca_file: \"{ca}\", method: POST }}"
    ))?;
    assert_eq!(outcome(&post).await, Ok(()));
    let get = probe(&format!(
        "http: {{ url: \"https://localhost:{port}/only-post\", ca_file: \"{ca}\" }}"
    ))?;
    assert_eq!(
        outcome(&get).await,
        Err("status 405 (expected [200])".into())
    );
    let head = probe(&format!(
        "http: {{ url: \"https://localhost:{port}/health\", ca_file: \"{ca}\", method: HEAD }}"
    ))?;
    assert_eq!(outcome(&head).await, Ok(()));
    let methods: Vec<String> = server.seen().iter().map(|s| s.method.clone()).collect();
    assert_eq!(methods[methods.len() - 3..], ["POST", "GET", "HEAD"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn expect_status_and_body_matches_decide_the_sample() -> Result<()> {
    let tls = make_certs()?;
    let server = TestHttpsServer::start(tls.path()).await?;
    let port = server.address.port();
    let ca = path(&tls.path().join("ca.pem"));
    let http = |rest: &str| {
        probe(&format!(
            "http: {{ url: \"https://localhost:{port}{rest}, ca_file: \"{ca}\" }}"
        ))
    };

    assert_eq!(
        outcome(&http("/unavailable\"")?).await,
        Err("status 503 (expected [200])".into())
    );
    assert_eq!(
        outcome(&http("/unavailable\", expect_status: [503]")?).await,
        Ok(())
    );
    assert_eq!(
        outcome(&http("/health\", body_matches: \"ok v[0-9]+\"")?).await,
        Ok(())
    );
    // A mismatch says so without quoting the body.
    let error = outcome(&http("/health\", body_matches: \"^maintenance\"")?)
        .await
        .unwrap_err();
    assert_eq!(error, "the body (14 bytes) does not match /^maintenance/");
    // A body beyond the 1 MiB read is not matched; without a pattern its status suffices.
    let error = outcome(&http("/large\", body_matches: x")?)
        .await
        .unwrap_err();
    assert!(error.contains("larger than 1048576 bytes"), "{error}");
    const { assert!(LARGE_BODY_BYTES > chaosctl::engine::probe::MAX_RESPONSE_BYTES) };
    assert_eq!(outcome(&http("/large\"")?).await, Ok(()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_submitted_probe_connects_only_to_addresses_the_controller_allows() -> Result<()> {
    let tls = make_certs()?;
    let server = TestHttpsServer::start(tls.path()).await?;
    let port = server.address.port();
    let ca = path(&tls.path().join("ca.pem"));
    let mut p = probe(&format!(
        "http: {{ url: \"https://localhost:{port}/health\", ca_file: \"{ca}\" }}"
    ))?;
    let mut tcp = probe(&format!("tcp: {{ address: \"localhost:{port}\" }}"))?;
    let allow = |entries: &[&str]| -> Result<_> {
        let entries: Vec<String> = entries.iter().map(|e| e.to_string()).collect();
        Ok(Some(Arc::new(
            ProbeDestinations::parse(&entries).map_err(anyhow::Error::msg)?,
        )))
    };

    // `localhost` resolves to loopback addresses outside 127.0.0.2/32: no connection is
    // made, whatever the name resolved to at submission (DNS rebinding).
    p.connect_policy = allow(&["127.0.0.2"])?;
    tcp.connect_policy = allow(&["127.0.0.2"])?;
    let before = server.connections();
    for probe in [&p, &tcp] {
        let error = outcome(probe).await.unwrap_err();
        eprintln!("outside the destinations: {error}");
        assert!(
            error.starts_with("localhost resolves to [")
                && error.contains("127.0.0.1")
                && error.ends_with("none in the controller's probe_destinations: not connected"),
            "{error}"
        );
    }
    assert_eq!(server.connections(), before, "a refused probe connected");

    // The address it connects to is inside the network; or the name itself is listed.
    for entries in [&["127.0.0.0/8"][..], &["localhost"][..]] {
        p.connect_policy = allow(entries)?;
        tcp.connect_policy = allow(entries)?;
        assert_eq!(outcome(&p).await, Ok(()), "{entries:?}");
        assert_eq!(outcome(&tcp).await, Ok(()), "{entries:?}");
    }
    // A TCP probe succeeds at the kernel's handshake, before the server's accept loop
    // counts the connection: wait (bounded) for the count to catch up.
    let counted = std::time::Instant::now();
    while server.connections() < before + 4 && counted.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(server.connections(), before + 4);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn promql_probes_query_a_real_prometheus_over_https() -> Result<()> {
    let tls = make_certs()?;
    let prometheus = TestPrometheus::start_https(tls.path())?;
    let base = format!("https://127.0.0.1:{}", prometheus.address.port());
    let ca = path(&tls.path().join("ca.pem"));
    let promql = |query: &str, bounds: &str| {
        probe(&format!(
            "promql: {{ url: \"{base}\", ca_file: \"{ca}\", query: '{query}', {bounds} }}"
        ))
    };

    assert_eq!(
        outcome(&promql("vector(5)", "min: 1, max: 10")?).await,
        Ok(())
    );
    assert_eq!(
        outcome(&promql("scalar(vector(3))", "min: 3, max: 3")?).await,
        Ok(())
    );
    assert_eq!(
        outcome(&promql("vector(5)", "min: 6")?).await,
        Err("value 5 outside [Some(6.0), None]".into())
    );
    assert_eq!(
        outcome(&promql("vector(5)", "max: 4.5")?).await,
        Err("value 5 outside [None, Some(4.5)]".into())
    );
    // Prometheus' own message for a query it cannot parse.
    let error = outcome(&promql("sum(up", "min: 0")?).await.unwrap_err();
    eprintln!("a bad query: {error}");
    assert!(
        error.starts_with("prometheus answered 400 (bad_data): ") && error.contains("parse error"),
        "{error}"
    );
    // A selector matching no series has no sample to judge.
    let error = outcome(&promql("up{job=\"nothing-here\"}", "min: 0")?)
        .await
        .unwrap_err();
    assert_eq!(error, "the query returned no sample");

    // Its own scrape over HTTPS, as stored series: `up` is 1 once the first one is in
    // (scrape_interval 1s; bounded wait).
    let up = promql("up{job=\"prometheus\"}", "min: 1, max: 1")?;
    let started = Instant::now();
    let mut last = outcome(&up).await;
    while last.is_err() && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        last = outcome(&up).await;
    }
    assert_eq!(last, Ok(()), "{}", prometheus.log());

    // The transport is the HTTP probe's: without the CA file the certificate is refused.
    let untrusted = probe(&format!(
        "promql: {{ url: \"{base}\", query: 'vector(1)', min: 1 }}"
    ))?;
    let error = outcome(&untrusted).await.unwrap_err();
    assert!(error.contains("invalid peer certificate"), "{error}");
    Ok(())
}
