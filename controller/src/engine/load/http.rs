//! The built-in HTTP load: GET requests through the probes' transport (hyper's client on
//! a new connection per request, the destination check on every connection), each
//! recorded as a `Sample` at the moment it was started.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinSet;

use super::HttpLoad;
use crate::engine::probe::Sample;
use crate::engine::probe::http::{Exchange, send};
use crate::engine::probe::policy::ProbeDestinations;
use crate::engine::probe::url::{ProbeUrl, parse_url};
use crate::engine::task::AbortOnDrop;

/// Answers are read up to this much: the load measures the service, not the download.
const BODY_LIMIT: usize = 64 << 10;
/// At a fixed rate, arrivals beyond this many unanswered requests are counted as failed
/// rather than started: a dead service must not pile up connections on the controller.
const MAX_IN_FLIGHT: usize = 4096;

struct Target {
    url: ProbeUrl,
    timeout: Duration,
    destinations: Option<Arc<ProbeDestinations>>,
}

/// The load while it runs; `stop` ends it and hands over what it recorded.
pub struct HttpLoadRun {
    requests: Arc<Mutex<Vec<Sample>>>,
    stop: watch::Sender<bool>,
    task: AbortOnDrop,
}

impl HttpLoadRun {
    pub fn start(
        spec: &HttpLoad,
        started: Instant,
        destinations: Option<Arc<ProbeDestinations>>,
    ) -> Result<HttpLoadRun, String> {
        let target = Arc::new(Target {
            url: parse_url(&spec.url)?,
            timeout: spec.timeout,
            destinations,
        });
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = watch::channel(false);
        let task = match (spec.rate, spec.connections) {
            (Some(rate), _) => AbortOnDrop::spawn(at_rate(
                target,
                rate,
                started,
                Arc::clone(&requests),
                stopped,
            )),
            (None, Some(connections)) => AbortOnDrop::spawn(over_connections(
                target,
                connections,
                started,
                Arc::clone(&requests),
                stopped,
            )),
            (None, None) => return Err("an http load needs rate or connections".into()),
        };
        Ok(HttpLoadRun {
            requests,
            stop,
            task,
        })
    }

    /// Stops sending and waits for the requests in flight (each within its timeout).
    pub async fn stop(self) -> Vec<Sample> {
        let _ = self.stop.send(true);
        self.task.join().await;
        let mut requests = self.requests.lock().map(|r| r.clone()).unwrap_or_default();
        requests.sort_by_key(|r| r.at_ms);
        requests
    }
}

fn record(requests: &Mutex<Vec<Sample>>, sample: Sample) {
    if let Ok(mut requests) = requests.lock() {
        requests.push(sample);
    }
}

async fn one_request(target: &Target, started: Instant) -> Sample {
    let at_ms = started.elapsed().as_millis() as u64;
    let sent = Instant::now();
    let headers = BTreeMap::new();
    let exchange = Exchange {
        url: &target.url,
        method: hyper::Method::GET,
        headers: &headers,
        bearer_token_file: None,
        ca_file: None,
        destinations: target.destinations.as_deref(),
        body_limit: BODY_LIMIT,
    };
    let outcome = match tokio::time::timeout(target.timeout, send(&exchange)).await {
        Ok(Ok(answer)) if answer.status < 400 => Ok(()),
        Ok(Ok(answer)) => Err(format!("status {}", answer.status)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!("no answer within {:?}", target.timeout)),
    };
    let latency_ms = sent.elapsed().as_secs_f64() * 1000.0;
    Sample {
        at_ms,
        success: outcome.is_ok(),
        healthy: outcome.is_ok(),
        latency_ms,
        error: outcome.err().unwrap_or_default(),
    }
}

/// Open loop: a request every 1/rate seconds, whether or not the last ones were answered.
async fn at_rate(
    target: Arc<Target>,
    rate: f64,
    started: Instant,
    requests: Arc<Mutex<Vec<Sample>>>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    // Late ticks are sent at once, so the rate holds on average.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut in_flight = JoinSet::new();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stopped.changed() => break,
        }
        while in_flight.try_join_next().is_some() {}
        if in_flight.len() >= MAX_IN_FLIGHT {
            record(
                &requests,
                Sample {
                    at_ms: started.elapsed().as_millis() as u64,
                    success: false,
                    healthy: false,
                    latency_ms: 0.0,
                    error: format!("not sent: {MAX_IN_FLIGHT} requests unanswered"),
                },
            );
            continue;
        }
        let (target, requests) = (Arc::clone(&target), Arc::clone(&requests));
        in_flight.spawn(async move {
            let sample = one_request(&target, started).await;
            record(&requests, sample);
        });
    }
    while in_flight.join_next().await.is_some() {}
}

/// Closed loop: each connection sends its next request once the last one is answered.
async fn over_connections(
    target: Arc<Target>,
    connections: usize,
    started: Instant,
    requests: Arc<Mutex<Vec<Sample>>>,
    stopped: watch::Receiver<bool>,
) {
    let mut workers = JoinSet::new();
    for _ in 0..connections {
        let (target, requests, stopped) =
            (Arc::clone(&target), Arc::clone(&requests), stopped.clone());
        workers.spawn(async move {
            while !*stopped.borrow() {
                let sample = one_request(&target, started).await;
                let failed = !sample.success;
                record(&requests, sample);
                if failed {
                    // A refused connection answers at once: without a pause a dead
                    // service would be hammered in a tight loop.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        });
    }
    while workers.join_next().await.is_some() {}
}
