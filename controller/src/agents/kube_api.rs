//! The controller's optional access to the Kubernetes API: the pods that carry some labels,
//! the nodes of a zone, and deleting pods. A thin layer over kube-rs; what the answers
//! mean for a selection is decided in `selection`.
//!
//! RBAC the controller needs (cluster-wide, as experiments name any namespace):
//! `list` on `pods` (labels), `list` on `nodes` (zone), `delete` on `pods` (delete_pod).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, ObjectList};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde::de::DeserializeOwned;

/// The node label that names a node's availability zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// A pod by namespace and name.
pub type PodKey = (String, String);

/// How many objects one list call asks for; larger answers are paged.
const PAGE_SIZE: u32 = 500;
/// Bound on one API call, so that a dead API server fails a run instead of hanging it.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum KubeApiError {
    #[error("Kubernetes API access: {0}")]
    Config(String),
    /// 401/403: the controller's identity lacks the permission.
    #[error(
        "permission denied by the Kubernetes API: {action}: {message} (the controller's RBAC needs `{verb}` on `{resource}`)"
    )]
    PermissionDenied {
        action: String,
        verb: &'static str,
        resource: &'static str,
        message: String,
    },
    #[error("Kubernetes API: {action}: {code} {reason}: {message}")]
    Api {
        action: String,
        code: u16,
        reason: String,
        message: String,
    },
    #[error("Kubernetes API unreachable: {action}: {message}")]
    Transport { action: String, message: String },
}

/// What became of a pod deletion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deletion {
    /// The API accepted it (the pod terminates within its grace period).
    Deleted,
    /// The pod was already gone (404), which is what a deletion wants.
    AlreadyGone,
}

/// A connected Kubernetes API client.
#[derive(Clone)]
pub struct KubeApi {
    client: Client,
}

impl KubeApi {
    /// From the given kubeconfig file, or else the usual places: `KUBECONFIG`,
    /// `~/.kube/config`, then the in-cluster service account.
    pub async fn connect(kubeconfig: Option<&Path>) -> Result<KubeApi, KubeApiError> {
        let config = match kubeconfig {
            Some(path) => {
                let file = Kubeconfig::read_from(path).map_err(|e| {
                    KubeApiError::Config(format!("reading {}: {e}", path.display()))
                })?;
                Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                    .await
                    .map_err(|e| KubeApiError::Config(format!("{}: {e}", path.display())))?
            }
            None => Config::infer().await.map_err(|e| {
                KubeApiError::Config(format!(
                    "no kubeconfig (--kubeconfig, KUBECONFIG, ~/.kube/config) and not in a cluster: {e}"
                ))
            })?,
        };
        let client = Client::try_from(config)
            .map_err(|e| KubeApiError::Config(format!("building the client: {e}")))?;
        Ok(KubeApi { client })
    }

    /// Wraps a client (tests pass one over kube's mock service).
    pub fn from_client(client: Client) -> KubeApi {
        KubeApi { client }
    }

    /// The pods whose labels include every pair of `labels`, in `namespace` or in all.
    pub async fn pods_with_labels(
        &self,
        namespace: Option<&str>,
        labels: &BTreeMap<String, String>,
    ) -> Result<BTreeSet<PodKey>, KubeApiError> {
        let api: Api<Pod> = match namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        };
        let selector = label_selector(labels);
        let action = match namespace {
            Some(ns) => format!("list pods in {ns} with labels {selector}"),
            None => format!("list pods with labels {selector}"),
        };
        let pods = list_all(&api, &selector, &action, "pods").await?;
        Ok(pods
            .into_iter()
            .filter_map(|pod| Some((pod.metadata.namespace?, pod.metadata.name?)))
            .collect())
    }

    /// The names of the nodes labelled `topology.kubernetes.io/zone=<zone>`.
    pub async fn nodes_in_zone(&self, zone: &str) -> Result<BTreeSet<String>, KubeApiError> {
        let api: Api<Node> = Api::all(self.client.clone());
        let selector = format!("{ZONE_LABEL}={zone}");
        let action = format!("list nodes in zone {zone}");
        let nodes = list_all(&api, &selector, &action, "nodes").await?;
        Ok(nodes
            .into_iter()
            .filter_map(|node| node.metadata.name)
            .collect())
    }

    /// Deletes one pod with the given grace period; a pod already gone is not an error.
    pub async fn delete_pod(
        &self,
        namespace: &str,
        name: &str,
        grace_period: Duration,
    ) -> Result<Deletion, KubeApiError> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let params = DeleteParams {
            grace_period_seconds: Some(grace_period.as_secs().min(u32::MAX as u64) as u32),
            ..DeleteParams::default()
        };
        let action = format!("delete pod {namespace}/{name}");
        match tokio::time::timeout(CALL_TIMEOUT, api.delete(name, &params)).await {
            Err(_) => Err(timed_out(&action)),
            Ok(Ok(_)) => Ok(Deletion::Deleted),
            Ok(Err(kube::Error::Api(e))) if e.code == 404 => Ok(Deletion::AlreadyGone),
            Ok(Err(e)) => Err(classify(e, &action, "delete", "pods")),
        }
    }
}

/// `key=value` pairs joined by commas, in key order (every pair must match).
pub fn label_selector(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Every page of a list call.
async fn list_all<K>(
    api: &Api<K>,
    selector: &str,
    action: &str,
    resource: &'static str,
) -> Result<Vec<K>, KubeApiError>
where
    K: Clone + DeserializeOwned + std::fmt::Debug,
{
    let mut items = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut params = ListParams::default().labels(selector).limit(PAGE_SIZE);
        if let Some(token) = &token {
            params = params.continue_token(token);
        }
        let page: ObjectList<K> = tokio::time::timeout(CALL_TIMEOUT, api.list(&params))
            .await
            .map_err(|_| timed_out(action))?
            .map_err(|e| classify(e, action, "list", resource))?;
        items.extend(page.items);
        token = page.metadata.continue_.filter(|t| !t.is_empty());
        if token.is_none() {
            return Ok(items);
        }
    }
}

fn timed_out(action: &str) -> KubeApiError {
    KubeApiError::Transport {
        action: action.to_string(),
        message: format!("no answer within {CALL_TIMEOUT:?}"),
    }
}

fn classify(
    error: kube::Error,
    action: &str,
    verb: &'static str,
    resource: &'static str,
) -> KubeApiError {
    match error {
        kube::Error::Api(e) if e.code == 401 || e.code == 403 => KubeApiError::PermissionDenied {
            action: action.to_string(),
            verb,
            resource,
            message: e.message,
        },
        kube::Error::Api(e) => KubeApiError::Api {
            action: action.to_string(),
            code: e.code,
            reason: e.reason,
            message: e.message,
        },
        other => KubeApiError::Transport {
            action: action.to_string(),
            message: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Response};
    use kube::client::Body;
    use tower_test::mock;

    type Handle = mock::Handle<Request<Body>, Response<Body>>;

    fn mock_api() -> (KubeApi, Handle) {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        (
            KubeApi::from_client(Client::new(service, "default")),
            handle,
        )
    }

    fn json_response(status: u16, body: serde_json::Value) -> Response<Body> {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap()
    }

    fn status_body(code: u16, reason: &str, message: &str) -> serde_json::Value {
        serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message, "reason": reason, "code": code,
        })
    }

    fn pod(namespace: &str, name: &str) -> serde_json::Value {
        serde_json::json!({"metadata": {"namespace": namespace, "name": name}})
    }

    /// Answers the next request with `response` and returns what it asked for.
    async fn answer(handle: &mut Handle, response: Response<Body>) -> (String, String, Vec<u8>) {
        let (request, send) = handle.next_request().await.expect("a request");
        let method = request.method().to_string();
        let uri = request.uri().to_string();
        let body = request
            .into_body()
            .collect_bytes()
            .await
            .expect("request body")
            .to_vec();
        send.send_response(response);
        (method, uri, body)
    }

    fn query(uri: &str) -> BTreeMap<String, String> {
        let query = uri.split_once('?').map(|(_, q)| q).unwrap_or_default();
        query
            .split('&')
            .filter(|p| !p.is_empty())
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.to_string(), percent_decode(v)))
            .collect()
    }

    fn percent_decode(text: &str) -> String {
        let bytes = text.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' && i + 2 < bytes.len() {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            } else {
                out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selectors_join_pairs_in_key_order() {
        assert_eq!(
            label_selector(&labels(&[("tier", "web"), ("app", "shop")])),
            "app=shop,tier=web"
        );
    }

    #[tokio::test]
    async fn pods_are_listed_in_the_namespace_with_the_label_selector() {
        let (api, mut handle) = mock_api();
        let server = tokio::spawn(async move {
            let list = serde_json::json!({
                "kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "7"},
                "items": [pod("shop", "web-0"), pod("shop", "web-1")],
            });
            answer(&mut handle, json_response(200, list)).await
        });
        let pods = api
            .pods_with_labels(Some("shop"), &labels(&[("app", "web"), ("tier", "front")]))
            .await
            .unwrap();
        let (method, uri, _) = server.await.unwrap();
        assert_eq!(method, "GET");
        assert!(uri.starts_with("/api/v1/namespaces/shop/pods?"), "{uri}");
        let q = query(&uri);
        assert_eq!(q["labelSelector"], "app=web,tier=front");
        assert_eq!(q["limit"], "500");
        assert!(!q.contains_key("fieldSelector"), "{uri}");
        let names: Vec<String> = pods
            .into_iter()
            .map(|(ns, n)| format!("{ns}/{n}"))
            .collect();
        assert_eq!(names, ["shop/web-0", "shop/web-1"]);
    }

    #[tokio::test]
    async fn pods_of_every_namespace_are_paged() {
        let (api, mut handle) = mock_api();
        let server = tokio::spawn(async move {
            let first = serde_json::json!({
                "kind": "PodList", "apiVersion": "v1", "metadata": {"continue": "page-2"},
                "items": [pod("a", "x-0")],
            });
            let second = serde_json::json!({
                "kind": "PodList", "apiVersion": "v1", "metadata": {},
                "items": [pod("b", "x-1")],
            });
            let one = answer(&mut handle, json_response(200, first)).await;
            let two = answer(&mut handle, json_response(200, second)).await;
            (one.1, two.1)
        });
        let pods = api
            .pods_with_labels(None, &labels(&[("app", "x")]))
            .await
            .unwrap();
        let (first, second) = server.await.unwrap();
        assert!(first.starts_with("/api/v1/pods?"), "{first}");
        assert!(!query(&first).contains_key("continue"), "{first}");
        assert_eq!(query(&second)["continue"], "page-2");
        assert_eq!(query(&second)["labelSelector"], "app=x");
        assert_eq!(pods.len(), 2);
    }

    #[tokio::test]
    async fn a_zone_is_the_nodes_with_the_zone_label() {
        let (api, mut handle) = mock_api();
        let server = tokio::spawn(async move {
            let list = serde_json::json!({
                "kind": "NodeList", "apiVersion": "v1", "metadata": {},
                "items": [{"metadata": {"name": "ip-10-0-1-5"}}, {"metadata": {"name": "ip-10-0-1-9"}}],
            });
            answer(&mut handle, json_response(200, list)).await
        });
        let nodes = api.nodes_in_zone("eu-west-1a").await.unwrap();
        let (method, uri, _) = server.await.unwrap();
        assert_eq!(method, "GET");
        assert!(uri.starts_with("/api/v1/nodes?"), "{uri}");
        assert_eq!(
            query(&uri)["labelSelector"],
            "topology.kubernetes.io/zone=eu-west-1a"
        );
        assert_eq!(
            nodes.into_iter().collect::<Vec<_>>(),
            ["ip-10-0-1-5", "ip-10-0-1-9"]
        );
    }

    #[tokio::test]
    async fn a_forbidden_list_names_the_missing_permission() {
        let (api, mut handle) = mock_api();
        let server = tokio::spawn(async move {
            let body = status_body(
                403,
                "Forbidden",
                "nodes is forbidden: User \"system:serviceaccount:chaos-control:chaosctl\" cannot list resource \"nodes\"",
            );
            answer(&mut handle, json_response(403, body)).await
        });
        let error = api.nodes_in_zone("a").await.unwrap_err();
        server.await.unwrap();
        assert!(
            matches!(
                &error,
                KubeApiError::PermissionDenied {
                    verb: "list",
                    resource: "nodes",
                    ..
                }
            ),
            "{error:?}"
        );
        let text = error.to_string();
        assert!(text.starts_with("permission denied"), "{text}");
        assert!(text.contains("needs `list` on `nodes`"), "{text}");
        assert!(text.contains("cannot list resource"), "{text}");
    }

    #[tokio::test]
    async fn a_delete_sends_the_grace_period_in_the_body() {
        let (api, mut handle) = mock_api();
        let server = tokio::spawn(async move {
            let deleted = serde_json::json!({
                "kind": "Pod", "apiVersion": "v1",
                "metadata": {"namespace": "shop", "name": "web-0", "deletionTimestamp": "2025-01-01T00:00:00Z"},
            });
            answer(&mut handle, json_response(200, deleted)).await
        });
        let outcome = api
            .delete_pod("shop", "web-0", Duration::from_secs(5))
            .await
            .unwrap();
        let (method, uri, body) = server.await.unwrap();
        assert_eq!(outcome, Deletion::Deleted);
        assert_eq!(method, "DELETE");
        assert_eq!(
            uri.split('?').next().unwrap(),
            "/api/v1/namespaces/shop/pods/web-0"
        );
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["gracePeriodSeconds"], 5, "{body}");
        assert!(body.get("dryRun").is_none(), "{body}");
    }

    #[tokio::test]
    async fn deleting_a_pod_already_gone_is_not_an_error() {
        let (api, mut handle) = mock_api();
        let server = tokio::spawn(async move {
            let body = status_body(404, "NotFound", "pods \"web-0\" not found");
            answer(&mut handle, json_response(404, body)).await
        });
        let outcome = api
            .delete_pod("shop", "web-0", Duration::ZERO)
            .await
            .unwrap();
        let (_, _, body) = server.await.unwrap();
        assert_eq!(outcome, Deletion::AlreadyGone);
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["gracePeriodSeconds"], 0, "{body}");
    }

    #[tokio::test]
    async fn a_forbidden_delete_and_a_server_error_are_errors() {
        let (api, mut handle) = mock_api();
        let server = tokio::spawn(async move {
            let forbidden = status_body(403, "Forbidden", "pods \"web-0\" is forbidden");
            answer(&mut handle, json_response(403, forbidden)).await;
            let broken = status_body(500, "InternalError", "etcd is down");
            answer(&mut handle, json_response(500, broken)).await;
        });
        let denied = api
            .delete_pod("shop", "web-0", Duration::ZERO)
            .await
            .unwrap_err();
        assert!(
            denied.to_string().contains("needs `delete` on `pods`"),
            "{denied}"
        );
        let failed = api
            .delete_pod("shop", "web-0", Duration::ZERO)
            .await
            .unwrap_err();
        server.await.unwrap();
        assert!(
            matches!(&failed, KubeApiError::Api { code: 500, .. }),
            "{failed:?}"
        );
        assert!(failed.to_string().contains("etcd is down"), "{failed}");
    }
}
