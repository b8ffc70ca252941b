"""What the agent needs from its pod, and what each overlay promises, checked on rendered objects.

Schemas say an object is well formed; these checks say it is the object the
agent needs (see docs/eks.md and the agent's flags).
"""

AGENT_PORTS = {"grpc": 7090, "metrics": 7091}
# mount path -> (host path, hostPath type, must be read-only)
HOST_MOUNTS = {
    "/sys/fs/cgroup": ("/sys/fs/cgroup", "Directory", False),
    "/run/containerd/containerd.sock": ("/run/containerd/containerd.sock", "Socket", False),
    "/var/lib/chaos-control": ("/var/lib/chaos-control", "DirectoryOrCreate", False),
    "/lib/modules": ("/lib/modules", "Directory", True),
}
# What each fault kind needs (README "Capabilities"; tests/tests/agent_privilege.rs runs
# the agent with exactly this set).
AGENT_CAPABILITIES = {"KILL", "NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"}
TLS_ITEMS = {"ca.crt": "ca.pem", "tls.crt": "agent.pem", "tls.key": "agent-key.pem"}
CONTROLLER_RULES = {("", "pods"): {"list", "delete"}, ("", "nodes"): {"list"}}
# The namespaced-controller overlay: pods through a Role per namespace, nodes cluster-wide.
NAMESPACED_OVERLAY = "namespaced-controller"
POD_ACCESS = "chaosctl-pods"
NODE_RULES = {("", "nodes"): {"list"}}
POD_RULES = {("", "pods"): {"list", "delete"}}


def find(docs, kind, name=None):
    return [d for d in docs if d.get("kind") == kind and (name is None or d["metadata"].get("name") == name)]


def port_number(container, port):
    if isinstance(port, int):
        return port
    return next((p["containerPort"] for p in container.get("ports", []) if p.get("name") == port), None)


def agent_problems(daemonset, secrets):
    """Everything wrong with the agent DaemonSet, as a list of sentences."""
    problems = []
    pod = daemonset["spec"]["template"]["spec"]
    containers = [c for c in pod.get("containers", []) if c["name"] == "agent"]
    if not containers:
        return ["no container named agent"]
    agent = containers[0]

    if pod.get("hostPID") is not True:
        problems.append("hostPID is not true")
    if pod.get("hostNetwork"):
        problems.append("hostNetwork is set; the agent works in the targets' own network namespaces")
    if not any(t.get("operator") == "Exists" and not t.get("key") and not t.get("effect")
               for t in pod.get("tolerations", [])):
        problems.append("no toleration of every taint (operator: Exists, no key, no effect)")
    if pod.get("priorityClassName") != "system-node-critical":
        problems.append("priorityClassName is not system-node-critical")
    if (pod.get("terminationGracePeriodSeconds") or 0) < 30:
        problems.append("terminationGracePeriodSeconds < 30: not enough time to revert on SIGTERM")
    strategy = daemonset["spec"].get("updateStrategy", {})
    if strategy.get("type") != "RollingUpdate" or "maxUnavailable" not in strategy.get("rollingUpdate", {}):
        problems.append("updateStrategy is not RollingUpdate with maxUnavailable")
    security = agent.get("securityContext", {})
    if security.get("privileged"):
        problems.append("agent container is privileged; it needs only its capabilities")
    capabilities = security.get("capabilities", {})
    if capabilities.get("drop") != ["ALL"]:
        problems.append("agent container does not drop ALL capabilities")
    if set(capabilities.get("add", [])) != AGENT_CAPABILITIES:
        problems.append(f"agent capabilities.add is not exactly {sorted(AGENT_CAPABILITIES)}")
    if security.get("allowPrivilegeEscalation") is not False:
        problems.append("agent container allows privilege escalation")
    if security.get("readOnlyRootFilesystem") is not True:
        problems.append("agent container's root filesystem is writable")
    resources = agent.get("resources", {})
    for part in ("requests", "limits"):
        if set(resources.get(part, {})) != {"cpu", "memory"}:
            problems.append(f"resources.{part} must set cpu and memory")

    for name, number in AGENT_PORTS.items():
        if port_number(agent, name) != number:
            problems.append(f"container port {name} is not {number}")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = agent.get(probe, {}).get("httpGet", {})
        if get.get("path") != path or port_number(agent, get.get("port")) != AGENT_PORTS["metrics"]:
            problems.append(f"{probe} is not httpGet {path} on the metrics port 7091")

    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = {m["mountPath"]: m for m in agent.get("volumeMounts", [])}
    for mount_path, (host_path, host_type, read_only) in HOST_MOUNTS.items():
        mount = mounts.get(mount_path)
        host = (volumes.get(mount["name"], {}).get("hostPath") or {}) if mount else {}
        if host.get("path") != host_path or host.get("type") != host_type:
            problems.append(f"{mount_path} is not a hostPath mount of {host_path} (type {host_type})")
        elif bool(mount.get("readOnly")) != read_only:
            problems.append(f"{mount_path} must be mounted {'read-only' if read_only else 'read-write'}")

    args = agent.get("args", [])
    expected_args = {
        "--listen=0.0.0.0:7090", "--metrics-listen=0.0.0.0:7091", "--node-name=$(NODE_NAME)",
        "--state-dir=/var/lib/chaos-control", "--tls-dir=/etc/chaos-control/tls",
        "--containerd-socket=/run/containerd/containerd.sock", "--containerd-namespace=k8s.io",
    }
    for arg in sorted(expected_args - set(args)):
        problems.append(f"argument {arg} missing")
    node_name = [e for e in agent.get("env", []) if e.get("name") == "NODE_NAME"]
    if not node_name or node_name[0].get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "spec.nodeName":
        problems.append("env NODE_NAME does not come from spec.nodeName")

    tls_mount = mounts.get("/etc/chaos-control/tls")
    secret = volumes.get(tls_mount["name"], {}).get("secret", {}) if tls_mount else {}
    items = {i["key"]: i["path"] for i in secret.get("items", [])}
    if items != TLS_ITEMS:
        problems.append(f"TLS Secret items {items} are not {TLS_ITEMS}")
    if secret.get("secretName") not in secrets:
        problems.append(f"TLS Secret {secret.get('secretName')} is neither generated nor issued by a Certificate")
    return problems


CONTROLLER_METRICS_PORT = 7092
CONTROLLER_TLS_ITEMS = {"ca.crt": "ca.pem", "tls.crt": "client.pem", "tls.key": "client-key.pem"}
CONTROLLER_API_PORT = 7093
CONTROLLER_API_TLS_ITEMS = {"ca.crt": "ca.pem", "tls.crt": "controller.pem", "tls.key": "controller-key.pem"}


def controller_problems(deployment, secrets):
    """Everything wrong with the controller Deployment, as a list of sentences."""
    problems = []
    pod = deployment["spec"]["template"]["spec"]
    containers = [c for c in pod.get("containers", []) if c["name"] == "chaosctl"]
    if not containers:
        return ["no container named chaosctl"]
    controller = containers[0]
    # Two controllers would both renew and revert the same leases.
    if deployment["spec"].get("replicas") != 1 or deployment["spec"].get("strategy", {}).get("type") != "Recreate":
        problems.append("not exactly one replica with the Recreate strategy")
    if controller.get("args", [])[:1] != ["serve"]:
        problems.append("the container does not run `chaosctl serve`")
    if pod.get("securityContext", {}).get("runAsNonRoot") is not True:
        problems.append("runAsNonRoot is not true: the controller needs no privilege")
    if pod.get("hostPID") or pod.get("hostNetwork") or controller.get("securityContext", {}).get("privileged"):
        problems.append("the controller asks for host namespaces or privilege")
    if port_number(controller, "metrics") != CONTROLLER_METRICS_PORT:
        problems.append(f"container port metrics is not {CONTROLLER_METRICS_PORT}")
    for probe in ("livenessProbe", "readinessProbe"):
        get = controller.get(probe, {}).get("httpGet", {})
        if get.get("path") != "/healthz" or port_number(controller, get.get("port")) != CONTROLLER_METRICS_PORT:
            problems.append(f"{probe} is not httpGet /healthz on the metrics port {CONTROLLER_METRICS_PORT}")
    resources = controller.get("resources", {})
    for part in ("requests", "limits"):
        if set(resources.get(part, {})) != {"cpu", "memory"}:
            problems.append(f"resources.{part} must set cpu and memory")

    if port_number(controller, "api") != CONTROLLER_API_PORT:
        problems.append(f"container port api is not {CONTROLLER_API_PORT}")
    args = controller.get("args", [])
    for arg in (f"--api-listen=0.0.0.0:{CONTROLLER_API_PORT}", "--api-tls-dir=/etc/chaos-control/api-tls"):
        if arg not in args:
            problems.append(f"argument {arg} missing")

    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = {m["mountPath"]: m for m in controller.get("volumeMounts", [])}
    for path, what, expected in (("/etc/chaos-control/tls", "client", CONTROLLER_TLS_ITEMS),
                                 ("/etc/chaos-control/api-tls", "API server", CONTROLLER_API_TLS_ITEMS)):
        mount = mounts.get(path)
        secret = volumes.get(mount["name"], {}).get("secret", {}) if mount else {}
        items = {i["key"]: i["path"] for i in secret.get("items", [])}
        if items != expected:
            problems.append(f"{what} TLS Secret items {items} are not {expected}")
        if secret.get("secretName") not in secrets:
            problems.append(f"{what} TLS Secret {secret.get('secretName')} is neither generated nor issued by a Certificate")
    return problems


def check_overlay(overlay, docs, report):
    daemonsets = find(docs, "DaemonSet", "chaos-agent")
    report.add(f"{overlay}: one chaos-agent DaemonSet", len(daemonsets) == 1)
    if len(daemonsets) != 1:
        return
    daemonset = daemonsets[0]
    secrets = {d["metadata"]["name"] for d in find(docs, "Secret")}
    secrets |= {c["spec"]["secretName"] for c in find(docs, "Certificate")}
    problems = agent_problems(daemonset, secrets)
    report.add(f"{overlay}: agent DaemonSet has hostPID, host mounts, tolerations, probes, TLS items",
               not problems, "; ".join(problems))

    namespaces = find(docs, "Namespace", "chaos-control")
    labels = namespaces[0]["metadata"].get("labels", {}) if namespaces else {}
    report.add(f"{overlay}: namespace chaos-control enforces, audits and warns at privileged",
               all(labels.get(f"pod-security.kubernetes.io/{m}") == "privileged" for m in ("enforce", "audit", "warn")))
    namespaced = [d for d in docs if d.get("kind") not in ("Namespace", "ClusterRole", "ClusterRoleBinding")
                  and not is_pod_access(d)]
    stray = [f"{d['kind']}/{d['metadata']['name']}" for d in namespaced
             if d["metadata"].get("namespace") != "chaos-control"]
    report.add(f"{overlay}: every namespaced object is in chaos-control", not stray, ", ".join(stray))

    services = find(docs, "Service", "chaos-agent")
    ports = {p["name"]: p["port"] for p in services[0]["spec"].get("ports", [])} if services else {}
    report.add(f"{overlay}: headless Service chaos-agent with grpc 7090 and metrics 7091",
               bool(services) and services[0]["spec"].get("clusterIP") == "None" and ports == AGENT_PORTS)

    node_selector = daemonset["spec"]["template"]["spec"].get("nodeSelector")
    if overlay == "selected-nodes":
        report.add(f"{overlay}: agent only on nodes labelled chaos-control.io/enabled=true",
                   node_selector == {"chaos-control.io/enabled": "true"}, f"nodeSelector is {node_selector}")
    else:
        report.add(f"{overlay}: agent on every node (no nodeSelector)", node_selector is None)

    cert_manager = [f"{d['kind']}/{d['metadata']['name']}" for d in docs
                    if d.get("apiVersion", "").startswith("cert-manager.io/")]
    if overlay == "chaosctl-certs":
        report.add(f"{overlay}: no cert-manager objects", not cert_manager, ", ".join(cert_manager))
    else:
        report.add(f"{overlay}: cert-manager self-signed -> CA -> agent, client and controller Certificates",
                   len(cert_manager) == 6, ", ".join(cert_manager))

    controllers = find(docs, "Deployment", "chaosctl")
    report.add(f"{overlay}: one controller Deployment", len(controllers) == 1)
    if controllers:
        problems = controller_problems(controllers[0], secrets)
        report.add(f"{overlay}: controller runs serve, non-root, probes, resources, client TLS items",
                   not problems, "; ".join(problems))
    if overlay == NAMESPACED_OVERLAY:
        problems = namespaced_rbac_problems(docs)
        report.add(f"{overlay}: controller RBAC is list nodes cluster-wide, list/delete pods only through "
                   f"Roles in the listed namespaces", not problems, "; ".join(problems))
    else:
        rules = cluster_rules(docs)
        report.add(f"{overlay}: controller RBAC is get/list/watch pods and nodes, delete pods, nothing else",
                   rules == CONTROLLER_RULES, f"rules are {rules}")


def rule_set(role):
    rules = {}
    for rule in role.get("rules", []):
        for group in rule.get("apiGroups", []):
            for resource in rule.get("resources", []):
                rules.setdefault((group, resource), set()).update(rule.get("verbs", []))
    return rules


def cluster_rules(docs):
    rules = {}
    for role in find(docs, "ClusterRole"):
        for key, verbs in rule_set(role).items():
            rules.setdefault(key, set()).update(verbs)
    return rules


def is_pod_access(doc):
    """A Role or RoleBinding of the namespaced-controller overlay (it lives in a target namespace)."""
    return doc.get("kind") in ("Role", "RoleBinding") and doc["metadata"].get("name") == POD_ACCESS


def namespaced_rbac_problems(docs):
    """What is wrong with the namespaced-controller overlay's RBAC, as sentences."""
    problems = []
    rules = cluster_rules(docs)
    if rules != NODE_RULES:
        problems.append(f"the ClusterRole grants {rules}, not only list on nodes")
    roles = {d["metadata"].get("namespace"): d for d in find(docs, "Role", POD_ACCESS)}
    bindings = {d["metadata"].get("namespace"): d for d in find(docs, "RoleBinding", POD_ACCESS)}
    if not roles:
        problems.append(f"no Role {POD_ACCESS}")
    for namespace, role in sorted(roles.items()):
        if namespace in (None, "chaos-control"):
            problems.append(f"Role {POD_ACCESS} is in {namespace}, not in a namespace to act in")
        if rule_set(role) != POD_RULES:
            problems.append(f"Role {namespace}/{POD_ACCESS} grants {rule_set(role)}")
        binding = bindings.get(namespace)
        if binding is None:
            problems.append(f"no RoleBinding {namespace}/{POD_ACCESS}")
            continue
        ref = binding.get("roleRef", {})
        subjects = binding.get("subjects", [])
        if ref.get("kind") != "Role" or ref.get("name") != POD_ACCESS:
            problems.append(f"RoleBinding {namespace}/{POD_ACCESS} binds {ref}")
        if subjects != [{"kind": "ServiceAccount", "name": "chaosctl", "namespace": "chaos-control"}]:
            problems.append(f"RoleBinding {namespace}/{POD_ACCESS} binds {subjects}")
    for namespace in sorted(set(bindings) - set(roles)):
        problems.append(f"RoleBinding {namespace}/{POD_ACCESS} without its Role")
    return problems
