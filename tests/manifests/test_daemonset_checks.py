"""The DaemonSet checks accept the shipped DaemonSet and catch each thing the agent needs going missing."""

import copy
import unittest
from pathlib import Path

import yaml

from daemonset_checks import agent_problems, controller_problems

MANIFESTS = Path(__file__).resolve().parent.parent.parent / "manifests"
BASE = MANIFESTS / "base" / "daemonset.yaml"
CONTROLLER = MANIFESTS / "components" / "controller" / "deployment.yaml"
SECRETS = {"chaos-agent-tls"}


def shipped():
    return yaml.safe_load(BASE.read_text())


def pod(daemonset):
    return daemonset["spec"]["template"]["spec"]


def agent(daemonset):
    return pod(daemonset)["containers"][0]


class AgentProblemsTest(unittest.TestCase):
    def assert_caught(self, change, expected):
        daemonset = copy.deepcopy(shipped())
        change(daemonset)
        problems = agent_problems(daemonset, SECRETS)
        self.assertTrue(any(expected in p for p in problems), f"{expected!r} not in {problems}")

    def test_shipped_daemonset_has_no_problem(self):
        self.assertEqual(agent_problems(shipped(), SECRETS), [])

    def test_privileged_agent(self):
        self.assert_caught(lambda d: agent(d)["securityContext"].update(privileged=True), "is privileged")

    def test_capabilities_not_dropped(self):
        self.assert_caught(lambda d: agent(d)["securityContext"]["capabilities"].pop("drop"), "drop ALL")

    def test_an_extra_capability(self):
        self.assert_caught(lambda d: agent(d)["securityContext"]["capabilities"]["add"].append("SYS_MODULE"),
                           "capabilities.add is not exactly")

    def test_a_missing_capability(self):
        self.assert_caught(lambda d: agent(d)["securityContext"]["capabilities"]["add"].remove("NET_ADMIN"),
                           "capabilities.add is not exactly")

    def test_missing_host_pid(self):
        self.assert_caught(lambda d: pod(d).pop("hostPID"), "hostPID")

    def test_toleration_of_one_taint_only(self):
        self.assert_caught(lambda d: pod(d).update(tolerations=[{"key": "x", "operator": "Exists"}]), "toleration")

    def test_writable_modules(self):
        def change(d):
            next(m for m in agent(d)["volumeMounts"] if m["mountPath"] == "/lib/modules").pop("readOnly")
        self.assert_caught(change, "/lib/modules must be mounted read-only")

    def test_state_dir_not_on_host(self):
        def change(d):
            next(v for v in pod(d)["volumes"] if v["name"] == "state").update(hostPath=None, emptyDir={})
        self.assert_caught(change, "/var/lib/chaos-control is not a hostPath mount")

    def test_missing_containerd_socket(self):
        def change(d):
            agent(d)["volumeMounts"] = [m for m in agent(d)["volumeMounts"] if m["name"] != "containerd-socket"]
        self.assert_caught(change, "/run/containerd/containerd.sock")

    def test_liveness_on_grpc_port(self):
        self.assert_caught(lambda d: agent(d)["livenessProbe"]["httpGet"].update(port="grpc"), "livenessProbe")

    def test_missing_readiness(self):
        self.assert_caught(lambda d: agent(d).pop("readinessProbe"), "readinessProbe")

    def test_tls_items_with_cert_manager_names(self):
        def change(d):
            next(v for v in pod(d)["volumes"] if v["name"] == "tls")["secret"].pop("items")
        self.assert_caught(change, "TLS Secret items")

    def test_short_grace_period(self):
        self.assert_caught(lambda d: pod(d).update(terminationGracePeriodSeconds=5), "terminationGracePeriodSeconds")

    def test_node_name_not_from_downward_api(self):
        self.assert_caught(lambda d: agent(d).update(env=[{"name": "NODE_NAME", "value": "x"}]), "NODE_NAME")


if __name__ == "__main__":
    unittest.main()


class ControllerProblemsTest(unittest.TestCase):
    SECRETS = {"chaosctl-client-tls", "chaos-controller-tls"}

    def assert_caught(self, change, expected):
        deployment = copy.deepcopy(yaml.safe_load(CONTROLLER.read_text()))
        change(deployment)
        problems = controller_problems(deployment, self.SECRETS)
        self.assertTrue(any(expected in p for p in problems), f"{expected!r} not in {problems}")

    def test_shipped_deployment_has_no_problem(self):
        self.assertEqual(controller_problems(yaml.safe_load(CONTROLLER.read_text()), self.SECRETS), [])

    def test_missing_liveness(self):
        self.assert_caught(lambda d: pod(d)["containers"][0].pop("livenessProbe"), "livenessProbe")

    def test_readiness_on_wrong_port(self):
        def change(d):
            pod(d)["containers"][0]["readinessProbe"]["httpGet"]["port"] = 9999
        self.assert_caught(change, "readinessProbe")

    def test_two_replicas(self):
        self.assert_caught(lambda d: d["spec"].update(replicas=2), "one replica")

    def test_privileged_controller(self):
        def change(d):
            pod(d)["containers"][0]["securityContext"]["privileged"] = True
        self.assert_caught(change, "privilege")

    def test_unknown_client_secret(self):
        deployment = copy.deepcopy(yaml.safe_load(CONTROLLER.read_text()))
        problems = controller_problems(deployment, set())
        self.assertTrue(any("neither generated" in p for p in problems), problems)

    def test_api_without_its_certificate(self):
        def change(d):
            pod(d)["volumes"] = [v for v in pod(d)["volumes"] if v["name"] != "api-tls"]
        self.assert_caught(change, "API server TLS Secret")
